"""The message model on MIME shapes that real mail takes, and every real MIME sample."""

from __future__ import annotations

import base64
import os
import quopri
from pathlib import Path

import pytest

from smtpproxy.scan import message
from smtpproxy.scan.message import parse

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpora" / "mime"
NOT_MESSAGES = ("README", "MANIFEST", ".md", ".json", ".py", ".gitattributes")


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


INNER = """From: c@example.net
Subject: inner
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="IN"

--IN
Content-Type: text/html

<p>inner <a href="http://inner.example/x">link</a></p>
--IN
Content-Type: application/octet-stream
Content-Disposition: attachment; filename="inner.exe"
Content-Transfer-Encoding: base64

TVqQAAMAAAAEAAAA
--IN--
"""


def forwarded(inner: str, cte: str | None = None, encoded: str | None = None) -> bytes:
    cte_line = f"Content-Transfer-Encoding: {cte}\n" if cte else ""
    return crlf(f"""From: a@example.org
Subject: fwd
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="OUT"

--OUT
Content-Type: text/plain

see attached
--OUT
Content-Type: message/rfc822
Content-Disposition: attachment; filename="orig.eml"
{cte_line}
{encoded if encoded is not None else inner}
--OUT--
""")


@pytest.mark.parametrize("label, raw", [
    ("8bit", forwarded(INNER)),
    ("base64", forwarded(INNER, "base64", base64.encodebytes(crlf(INNER)).decode())),
    ("quoted-printable", forwarded(INNER, "quoted-printable", quopri.encodestring(INNER.encode()).decode())),
])
def test_parts_nested_in_message_rfc822(label, raw):
    msg = parse(raw)
    kinds = [(p.content_type, p.filename, p.nested) for p in msg.parts]
    assert kinds == [("text/plain", None, False), ("message/rfc822", "orig.eml", False),
                     ("text/html", None, True), ("application/octet-stream", "inner.exe", True)]
    assert msg.parts[-1].payload.startswith(b"MZ")
    assert msg.text_parts == ["see attached"]
    assert "http://inner.example/x" in msg.urls
    # The inner HTML is the message's text, not an alternative of its own body.
    assert msg.nested_html == {0}
    assert msg.own_body() == (["see attached"], [], [])


def test_encoded_attached_messages_are_bounded():
    # An attached message inside an attached message inside ... each base64:
    # only MAX_ENCODED_MESSAGES are decoded, the rest is a defect.
    inner = "Subject: core\n\ncore text\n"
    for _ in range(message.MAX_ENCODED_MESSAGES + 2):
        inner = forwarded(inner, "base64", base64.encodebytes(crlf(inner)).decode()).decode()
        inner = inner.replace("\r\n", "\n")
    msg = parse(crlf(inner))
    assert "TooManyEncodedMessages" in msg.defects
    assert sum(p.content_type == "message/rfc822" for p in msg.parts) == message.MAX_ENCODED_MESSAGES + 1


def test_related_inside_alternative():
    msg = parse(crlf("""From: a@example.org
Subject: rel
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="ALT"

--ALT
Content-Type: text/plain

hello there
--ALT
Content-Type: multipart/related; boundary="REL"

--REL
Content-Type: text/html

<p>hello there <img src="cid:img1"></p>
--REL
Content-Type: image/png; name="image001.png"
Content-ID: <img1>
Content-Disposition: inline; filename="image001.png"
Content-Transfer-Encoding: base64

iVBORw0KGgo=
--REL--
--ALT--
"""))
    assert msg.text_parts == ["hello there"]
    assert msg.html_texts == ["hello there"]
    assert [(p.filename, p.disposition) for p in msg.attachments] == [("image001.png", "inline")]
    assert msg.attachments[0].payload == b"\x89PNG\r\n\x1a\n"


def test_calendar_beside_html():
    msg = parse(crlf("""From: a@example.org
Subject: meet
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="ALT"

--ALT
Content-Type: text/html; charset=utf-8

<p>Meeting</p>
--ALT
Content-Type: text/calendar; charset=utf-8; method=REQUEST

BEGIN:VCALENDAR
DESCRIPTION:Join at https://meet.example/abc
END:VCALENDAR
--ALT--
"""))
    assert msg.html_texts == ["Meeting"]
    assert msg.text_parts == [] and msg.attachments == []
    assert msg.calendar_parts and "BEGIN:VCALENDAR" in msg.calendar_parts[0]
    assert msg.urls == ["https://meet.example/abc"]


@pytest.mark.parametrize("disposition, expected", [
    ('attachment; filename="=?UTF-8?B?UmVjaG51bmcucGRmLmV4ZQ==?="', "Rechnung.pdf.exe"),
    ("attachment; filename==?iso-8859-1?Q?r=E9sum=E9=2Edoc?=", "résumé.doc"),
    ("attachment; filename*=UTF-8''%E2%80%AEfdp.exe", "\u202efdp.exe"),
    ("attachment; filename*=iso-8859-1'fr'r%E9sum%E9.pdf", "résumé.pdf"),
    ("attachment;\n filename*0*=UTF-8''Rech%C3%BC;\n filename*1=\"ng.zip\"", "Rechüng.zip"),
    ("attachment; filename*=bogus-charset''abc.exe", "abc.exe"),
    ("attachment", "only-ct-name.js"),  # falls back to Content-Type's name
])
def test_attachment_names_rfc2047_and_rfc2231(disposition, expected):
    msg = parse(crlf(f"""From: a@example.org
Subject: names
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="M"

--M
Content-Type: text/plain

body
--M
Content-Type: application/octet-stream; name="only-ct-name.js"
Content-Disposition: {disposition}

x
--M--
"""))
    assert [p.filename for p in msg.attachments] == [expected]


def test_raw_utf8_filename():
    raw = crlf('From: a@example.org\nContent-Type: multipart/mixed; boundary="M"\n\n--M\n'
               'Content-Type: application/pdf\nContent-Disposition: attachment; filename="') \
        + "Résumé.pdf".encode() + crlf('"\n\nx\n--M--\n')
    assert [p.filename for p in parse(raw).attachments] == ["Résumé.pdf"]


@pytest.mark.parametrize("value, addresses, first", [
    ("Alice <alice@example.org>, bob@evil.example", ["alice@example.org", "bob@evil.example"],
     "alice@example.org"),
    ('"Smith, John" <john@example.org>', ["john@example.org"], "john@example.org"),
    ("=?UTF-8?Q?Smith=2C_John?= <john@example.org>", ["john@example.org"], "john@example.org"),
    ("a@example.org, b@example.org", ["a@example.org", "b@example.org"], "a@example.org"),
    ("undisclosed", [], "undisclosed"),  # no address: what parseaddr makes of it
])
def test_from_with_two_addresses(value, addresses, first):
    msg = parse(crlf(f"From: {value}\nSubject: x\n\nbody\n"))
    assert msg.from_addresses == addresses
    assert msg.from_address == first


def mime_corpus() -> list[Path]:
    files = []
    for root, _, names in os.walk(CORPUS):
        files.extend(Path(root) / n for n in names if not n.startswith(NOT_MESSAGES)
                     and not n.endswith(NOT_MESSAGES))
    return sorted(files)


def test_every_mime_corpus_file_parses():
    files = mime_corpus()
    if not files:
        pytest.skip(f"no MIME corpus under {CORPUS}")
    failures = []
    for path in files:
        try:
            msg = parse(path.read_bytes())
            _ = (msg.urls, msg.from_addresses, msg.from_address, msg.visible_text)
        except Exception as exc:  # the contract: parse never raises
            failures.append(f"{path.relative_to(CORPUS)}: {type(exc).__name__}: {exc}")
    assert failures == []
    assert len(files) > 250


def test_huge_from_list_is_read_only_so_far():
    raw = b"From: " + b", ".join(b"u%d@example.org" % i for i in range(100_000)) + b"\r\n\r\nx\r\n"
    msg = parse(raw)
    assert msg.from_address == "u0@example.org"
    assert 100 < len(msg.from_addresses) < 1000


@pytest.mark.parametrize("raw_value,expected", [
    # RFC 6532 (and common practice): the field's bytes are UTF-8.
    ("Grüße aus Köln – 50% Rabatt".encode(), "Grüße aus Köln – 50% Rabatt"),
    # Not UTF-8: read as Latin-1, as a body part without a charset is.
    ("café".encode("latin-1"), "café"),
    # Encoded words beside raw bytes.
    (b"=?utf-8?q?Gr=C3=BC=C3=9Fe?= und \xc3\xa4", "Grüße und ä"),
    (b"plain ascii", "plain ascii"),
])
def test_raw_8bit_header_fields_are_decoded(raw_value, expected):
    msg = parse(b"From: J\xc3\xb6rg <j@example.org>\r\nTo: a@example.net\r\nSubject: " + raw_value
                + b"\r\n\r\nhi\r\n")
    assert msg.subject == expected
    assert msg.header("From") == "Jörg <j@example.org>" and msg.from_address == "j@example.org"
    assert "\ufffd" not in "".join(v for _, v in msg.headers)


def test_raw_8bit_header_fields_in_the_body_charset():
    # Not UTF-8: read in the charset the body declares (mailers that write raw
    # 8-bit headers write them in it), else Latin-1.
    subject = "[광고] 요즘 뜨는 직종".encode("euc-kr")
    raw = (b"From: a@example.org\r\nSubject: " + subject + b"\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/plain; charset=ks_c_5601-1987\r\n\r\n" + "본문".encode("euc-kr") + b"\r\n")
    assert parse(raw).subject == "[광고] 요즘 뜨는 직종"
    # Bytes the declared charset cannot read fall back to Latin-1.
    raw = b"From: a@example.org\r\nSubject: caf\xe9\r\nContent-Type: text/plain; charset=utf-16\r\n\r\nx\r\n"
    assert parse(raw).subject == "caf\xe9"
