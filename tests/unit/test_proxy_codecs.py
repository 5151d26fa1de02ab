"""Table-driven tests of the proxy's pure pieces: XFORWARD, paths, DATA, headers, stuffing."""

from __future__ import annotations

import asyncio

import pytest

from smtpproxy import replies, xforward
from smtpproxy.headers import prepend_headers, remove_headers
from smtpproxy.wire import dot_stuff, params_valid, parse_path, read_data

# ------------------------------------------------------------------ XFORWARD

XFORWARD_PARSE = [
    ("plain", "NAME=mail.example.org ADDR=192.0.2.1",
     {"NAME": "mail.example.org", "ADDR": "192.0.2.1"}),
    ("ipv6 prefix dropped", "ADDR=IPV6:2001:db8::1", {"ADDR": "2001:db8::1"}),
    ("ipv6 prefix any case", "ADDR=ipv6:2001:db8::2", {"ADDR": "2001:db8::2"}),
    ("unavailable is None", "NAME=[UNAVAILABLE] HELO=[UNAVAILABLE]", {"NAME": None, "HELO": None}),
    ("tempunavail kept", "NAME=[TEMPUNAVAIL]", {"NAME": "[TEMPUNAVAIL]"}),
    ("xtext decoded", "HELO=a+20b+2Bc", {"HELO": "a b+c"}),
    ("names case-insensitive", "proto=ESMTP port=25", {"PROTO": "ESMTP", "PORT": "25"}),
    ("all attributes",
     "NAME=n ADDR=1.2.3.4 PORT=1 PROTO=SMTP HELO=h IDENT=i SOURCE=REMOTE",
     {"NAME": "n", "ADDR": "1.2.3.4", "PORT": "1", "PROTO": "SMTP", "HELO": "h",
      "IDENT": "i", "SOURCE": "REMOTE"}),
]


@pytest.mark.parametrize("label, arg, expected", XFORWARD_PARSE, ids=[c[0] for c in XFORWARD_PARSE])
def test_xforward_parse(label, arg, expected):
    assert xforward.parse(arg) == expected


@pytest.mark.parametrize("arg", ["", "   ", "NAME", "BOGUS=1", "NAME=a+ZZ", "NAME=a+2"])
def test_xforward_parse_refuses_malformed(arg):
    with pytest.raises(xforward.XforwardError):
        xforward.parse(arg)


@pytest.mark.parametrize("text", ["plain", "a b", "x+y=z", "caf\u00e9", "[brackets]", ""])
def test_xtext_round_trip(text):
    encoded = xforward.xtext_encode(text)
    assert all(0x21 <= ord(c) <= 0x7E for c in encoded)
    assert xforward.xtext_decode(encoded) == text


def test_xforward_format_only_supported_attributes_and_ipv6_prefix():
    attrs = {"NAME": "n.example", "ADDR": "2001:db8::1", "HELO": None, "IDENT": "id 1"}
    assert xforward.format_commands(attrs, {"NAME", "ADDR", "HELO"}) == [
        "XFORWARD NAME=n.example ADDR=IPV6:2001:db8::1 HELO=[UNAVAILABLE]"
    ]
    assert xforward.format_commands(attrs, set()) == []


def test_xforward_format_splits_long_commands():
    attrs = {"NAME": "n" * 300, "HELO": "h" * 300, "ADDR": "192.0.2.1"}
    commands = xforward.format_commands(attrs, set(xforward.ATTRIBUTES))
    assert len(commands) == 2
    assert all(len(c) <= xforward.MAX_COMMAND_LENGTH for c in commands)
    merged: dict = {}
    for command in commands:
        merged.update(xforward.parse(command.split(" ", 1)[1]))
    assert merged == attrs


# ------------------------------------------------------------------ MAIL/RCPT paths

PATHS = [
    ("FROM:<a@b.example>", "FROM:", ("a@b.example", [])),
    ("from:<a@b.example> SIZE=10 BODY=8BITMIME", "FROM:", ("a@b.example", ["SIZE=10", "BODY=8BITMIME"])),
    ("FROM: <a@b.example>", "FROM:", ("a@b.example", [])),
    ("FROM:<>", "FROM:", ("", [])),
    ("FROM:a@b.example RET=HDRS", "FROM:", ("a@b.example", ["RET=HDRS"])),
    ('FROM:<"odd>local"@b.example> ENVID=x', "FROM:", ('"odd>local"@b.example', ["ENVID=x"])),
    ("TO:<@relay.example:u@d.example>", "TO:", ("u@d.example", [])),
    ("TO:<r\u00e9@d.example> NOTIFY=NEVER", "TO:", ("r\u00e9@d.example", ["NOTIFY=NEVER"])),
    ("TO:<unterminated", "TO:", None),
    ("FROM <a@b>", "FROM:", None),
    (None, "FROM:", None),
    ("TO:", "TO:", None),
]


@pytest.mark.parametrize("arg, keyword, expected", PATHS)
def test_parse_path(arg, keyword, expected):
    assert parse_path(arg, keyword) == expected


@pytest.mark.parametrize("params, ok", [
    ([], True), (["SIZE=1"], True), (["SMTPUTF8"], True), (["ORCPT=rfc822;a@b"], True),
    (["X-FOO=1"], True), (["SIZE="], False), (["=1"], False), (["B@D=1"], False),
    (["\u00b9"], False), (["-X=1"], False), (["\u00e9T=1"], False),  # not RFC 5321 esmtp-keywords
])
def test_params_valid(params, ok):
    assert params_valid(params) is ok


# ------------------------------------------------------------------ DATA reading

DATA_CASES = [
    ("empty message", b".\r\n", b""),
    ("one line", b"hello\r\n.\r\n", b"hello\r\n"),
    ("stuffed first line", b"..x\r\n.\r\n", b".x\r\n"),
    ("stuffed lone dot", b"a\r\n..\r\nb\r\n.\r\n", b"a\r\n.\r\nb\r\n"),
    ("line ending in dot", b"end.\r\nmore.\r\n.\r\n", b"end.\r\nmore.\r\n"),
    ("empty line then end", b"\r\n.\r\n", b"\r\n"),
    ("long line", b"x" * 200_000 + b"\r\n.\r\n", b"x" * 200_000 + b"\r\n"),
]


async def _read(payload: bytes, limit: int, step: int, trailer: bytes = b"QUIT\r\n"):
    reader = asyncio.StreamReader(limit=65536)
    for i in range(0, len(payload), step):
        reader.feed_data(payload[i:i + step])
    reader.feed_data(trailer)
    reader.feed_eof()
    result = await read_data(reader, limit)
    rest = await reader.read()
    return result, rest


@pytest.mark.parametrize("step", [1, 7, 1 << 20], ids=["1-byte", "7-byte", "whole"])
@pytest.mark.parametrize("label, wire, content", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_read_data(label, wire, content, step):
    if step == 1 and len(wire) > 10_000:
        step = 997
    (got, size), rest = asyncio.run(_read(wire, 10_000_000, step))
    assert got == content and size == len(content)
    assert rest == b"QUIT\r\n", "bytes after the end of data must stay for the next command"


def test_read_data_over_limit_is_read_to_the_end_and_dropped():
    wire = b"y" * 5000 + b"\r\n.\r\n"
    (got, size), rest = asyncio.run(_read(wire, 1000, 333))
    assert got is None and size > 1000
    assert rest == b"QUIT\r\n"


@pytest.mark.parametrize("content", [b"", b"a\r\n", b".\r\n", b"a\r\n.b\r\n..\r\n", b"no final crlf"])
def test_dot_stuff_round_trips_through_read_data(content):
    wire = dot_stuff(content)
    (got, _), _ = asyncio.run(_read(wire, 10_000, 1))
    expected = content if content.endswith(b"\r\n") or not content else content + b"\r\n"
    assert got == expected


# ------------------------------------------------------------------ headers

MESSAGE = (b"Received: from a\r\n\tby b\r\nX-Spam: yes\r\nSubject: hi\r\n"
           b"X-SPAM: folded\r\n  continued\r\n\r\nX-Spam: in body stays\r\n")


def test_remove_headers_drops_all_copies_with_folds_and_keeps_body():
    assert remove_headers(MESSAGE, ["x-spam"]) == (
        b"Received: from a\r\n\tby b\r\nSubject: hi\r\n\r\nX-Spam: in body stays\r\n")


def test_remove_headers_without_body_separator():
    assert remove_headers(b"A: 1\r\nB: 2\r\n", ["a"]) == b"B: 2\r\n"


def test_prepend_headers_keeps_everything_else():
    out = prepend_headers(MESSAGE, [("X-One", "1"), ("X-Two", "2")])
    assert out == b"X-One: 1\r\nX-Two: 2\r\n" + MESSAGE


def test_reply_lines_multiline():
    assert replies.lines(250, "2.0.0 a\n2.0.0 b") == ["250-2.0.0 a", "250 2.0.0 b"]
    assert replies.lines(451, "") == ["451"]
