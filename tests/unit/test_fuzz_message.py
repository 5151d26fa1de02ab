"""Properties of the message model (smtpproxy/scan/message.py ``parse``).

``parse`` never raises, whatever the bytes: arbitrary wire bytes, MIME trees
with hostile structure (deep nesting, missing or clashing boundaries, bad
transfer encodings, unknown charsets, RFC 2047 and RFC 2231 words), many
header fields. What it returns keeps its bounds (MAX_PARTS parts,
MAX_TEXT_CHARS per text, MAX_URLS URLs), and every derived attribute the
checks read can be computed without an exception. Sizes are bounded here so
each example is cheap; no time is measured (D11 is about bounding the work
on huge messages, with its own test).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpproxy.scan import message
from tests.support.fuzz import wire_bytes

CHARSETS = ["utf-8", "us-ascii", "iso-8859-1", "koi8-r", "utf-16", "x-unknown", "", "\"utf-8\"",
            "gb2312", "utf-7"]
TYPES = ["text/plain", "text/html", "application/octet-stream", "image/png", "message/rfc822",
         "text/plain; format=flowed", "multipart/alternative", "bogus"]
CTES = ["7bit", "8bit", "base64", "quoted-printable", "x-uuencode", "binary", "nonsense", ""]

header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=30) | st.sampled_from([
    "=?utf-8?B?w6k=?=", "=?utf-8?Q?caf=C3=A9?=", "=?x-unknown?B?AAAA?=", "=?utf-8?B?!!!?=",
    "=?utf-8?Q?a", "\"Name, with comma\" <a@b.example>", "a@b.example, c@d.example", "<@route:a@b>",
    "(comment) a@b", "group: a@b, c@d;", "http://x.example/ www.y.example href=\"http://z\""])
body_bytes = wire_bytes(15) | st.sampled_from([
    b"aGVsbG8=\r\n", b"=C3=A9=\r\n=ZZ", b"<html><a href='http://a.example/x'>x</a><script>1</script>",
    b"begin 644 x\r\n#86)C\r\n`\r\nend\r\n", b"\xff\xfe\x00a", b"http://example.org/path?q=1."])


@st.composite
def mime(draw, depth: int = 0) -> bytes:
    """A MIME entity: headers then a body, a multipart one with sub-entities, boundaries
    sometimes wrong on purpose."""
    headers = b""
    for name in draw(st.lists(st.sampled_from(["From", "To", "Subject", "Received", "X-Any",
                                               "Content-Disposition", "Reply-To"]), max_size=5)):
        headers += name.encode() + b": " + draw(header_text).encode() + b"\r\n"
    ctype = draw(st.sampled_from(TYPES + ["multipart/mixed"] * (2 if depth < 4 else 0)))
    charset = draw(st.sampled_from(CHARSETS))
    if draw(st.booleans()):
        headers += b"Content-Disposition: attachment; filename*=utf-8''na%C3%AFve%ZZ.txt\r\n"
    if ctype.startswith("multipart/"):
        boundary = draw(st.sampled_from(["b1", "b2", "", "a b", "x" * 75, "=_q"]))
        headers += f'Content-Type: {ctype}; boundary="{boundary}"\r\n'.encode()
        parts = draw(st.lists(mime(depth + 1), max_size=3))
        used = draw(st.sampled_from([boundary, "other"])).encode()
        body = b"preamble\r\n" + b"".join(b"--" + used + b"\r\n" + p + b"\r\n" for p in parts)
        if draw(st.booleans()):
            body += b"--" + used + b"--\r\n"
    else:
        headers += f"Content-Type: {ctype}; charset={charset}\r\n".encode()
        headers += f"Content-Transfer-Encoding: {draw(st.sampled_from(CTES))}\r\n".encode()
        body = draw(body_bytes)
    return headers + b"\r\n" + body


def nested(depth: int, boundary: bytes = b"b") -> bytes:
    head = tail = b""
    for i in range(depth):
        b = boundary + str(i).encode()
        head += b"Content-Type: multipart/mixed; boundary=" + b + b"\r\n\r\n--" + b + b"\r\n"
        tail = b"\r\n--" + b + b"--\r\n" + tail
    return b"From: a@b.example\r\n" + head + b"Content-Type: text/plain\r\n\r\nhi" + tail


def check_model(raw: bytes, parse=message.parse) -> message.Message:
    """The invariant: parse returns a Message within its bounds, and every attribute the
    checks read is computable."""
    msg = parse(raw)
    assert isinstance(msg, message.Message) and msg.raw == raw
    assert len(msg.parts) <= message.MAX_PARTS
    assert all(len(t) <= message.MAX_TEXT_CHARS for t in msg.text_parts + msg.html_parts)
    assert all(isinstance(k, str) and isinstance(v, str) and "\n" not in v for k, v in msg.headers)
    assert len(msg.urls) <= message.MAX_URLS
    for attribute in ("from_address", "from_domain", "subject", "html_text", "visible_text",
                      "url_domains", "attachments", "from_fields"):
        getattr(msg, attribute)
    for name in ("From", "Subject", "Content-Type", "nonexistent"):
        msg.header(name)
        msg.header_all(name)
    return msg


def test_the_checker_sees_a_broken_model():
    msg = check_model(nested(3))
    assert msg.from_domain == "b.example" and len(msg.parts) == 1
    # A parse that let the part count run away, or kept a line end in a header, fails.
    part = message.Part("text/plain", None, None, None, 1)
    for broken in (message.Message(b"", [], parts=[part] * (message.MAX_PARTS + 1)),
                   message.Message(b"", [("Subject", "a\nX-Spam: no")])):
        with pytest.raises(AssertionError):
            check_model(b"", parse=lambda raw, broken=broken: broken)


@given(raw=wire_bytes() | st.binary(max_size=300))
def test_parse_never_raises_on_any_bytes(raw):
    check_model(raw)


@given(raw=mime())
def test_parse_never_raises_on_hostile_mime(raw):
    check_model(raw)


# Few distinct depths: around MAX_PARTS and the parser's recursion limit (before the D11
# bounds a 1000-deep message of 40 kB costs about 0.3 s to parse).
@given(depth=st.sampled_from([0, 1, 50, 199, 200, 201, 999, 1000, 3000]),
       boundary=st.sampled_from([b"b", b"x" * 60]))
def test_parse_returns_on_deep_nesting(depth, boundary):
    check_model(nested(depth, boundary))


@given(count=st.integers(0, 5000), field=st.sampled_from([b"X: y\r\n", b"From: a@b\r\n", b" fold\r\n",
                                                          b"Received: from x\r\n\tby y\r\n", b":\r\n"]))
def test_parse_returns_on_many_header_fields(count, field):
    check_model(b"Subject: s\r\n" + field * count + b"\r\nbody")


@given(parts=st.integers(0, 600))
def test_parse_keeps_the_part_bound(parts):
    body = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n" for _ in range(parts)) + b"--b--\r\n"
    msg = check_model(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + body)
    if parts + 1 > message.MAX_PARTS:  # walk() counts the multipart itself
        assert "TooManyParts" in msg.defects
    elif parts:
        assert len(msg.parts) == parts
