"""The policy protocol codec: labelled tables, fed whole and one byte at a time."""

from __future__ import annotations

import pytest

from policy.codec import (
    ProtocolError,
    RequestParser,
    format_reply,
    format_request,
    parse_reply,
    xtext_decode,
    xtext_encode,
)

POSTFIX_RCPT = (
    b"request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
    b"client_address=192.0.2.1\nclient_name=mail.example.com\n"
    b"reverse_client_name=mail.example.com\nhelo_name=mail.example.com\n"
    b"sender=alice@example.com\nrecipient=bob@example.org\nrecipient_count=0\n"
    b"queue_id=\ninstance=123.456.7\nsize=0\netrn_domain=\nstress=\n"
    b"sasl_method=\nsasl_username=\nsasl_sender=\nccert_subject=\nccert_issuer=\n"
    b"ccert_fingerprint=\nencryption_protocol=\nencryption_cipher=\n"
    b"encryption_keysize=0\npolicy_context=\nserver_address=127.0.0.1\nserver_port=25\n\n"
)

# (label, bytes on the wire, expected requests)
GOOD = [
    ("postfix_rcpt_request_absent_values_dropped", POSTFIX_RCPT, [{
        "request": "smtpd_access_policy", "protocol_state": "RCPT", "protocol_name": "ESMTP",
        "client_address": "192.0.2.1", "client_name": "mail.example.com",
        "reverse_client_name": "mail.example.com", "helo_name": "mail.example.com",
        "sender": "alice@example.com", "recipient": "bob@example.org", "instance": "123.456.7",
        "server_address": "127.0.0.1", "server_port": "25",
    }]),
    ("attributes_in_any_order_unknown_kept",
     b"zz_future=1\nrecipient=b@x\nrequest=smtpd_access_policy\n\n",
     [{"zz_future": "1", "recipient": "b@x", "request": "smtpd_access_policy"}]),
    ("two_requests_in_one_read", b"a=1\n\nb=2\n\n", [{"a": "1"}, {"b": "2"}]),
    ("repeated_name_keeps_last", b"a=1\na=2\n\n", [{"a": "2"}]),
    ("value_may_contain_equals", b"sender=prvs=1234=a@b\n\n", [{"sender": "prvs=1234=a@b"}]),
    ("crlf_tolerated", b"a=1\r\n\r\n", [{"a": "1"}]),
    ("ccert_subject_xtext_decoded", b"ccert_subject=Wietse+20Venema\n\n",
     [{"ccert_subject": "Wietse Venema"}]),
    ("numeric_zero_absent_but_text_zero_kept", b"size=0\nsender=0\n\n", [{"sender": "0"}]),
    ("utf8_address_kept", "recipient=jös@exämple.org\n\n".encode(),
     [{"recipient": "jös@exämple.org"}]),
]

BAD = [
    ("line_without_equals", b"garbage\n\n", "name=value"),
    ("empty_name", b"=value\n\n", "name=value"),
    ("empty_request", b"\n", "empty request"),
    ("nul_byte", b"a=\x00\n\n", "NUL"),
    ("line_too_long", b"a=" + b"x" * 100 + b"\n\n", "longer"),
    ("line_too_long_without_newline", b"a=" + b"x" * 200, "longer"),
    ("too_many_attributes", b"".join(b"a%d=1\n" % i for i in range(11)) + b"\n", "more than"),
]


def feed_all(chunks: list[bytes], **limits) -> list[dict]:
    parser = RequestParser(**limits)
    out = []
    for chunk in chunks:
        out += parser.feed(chunk)
    assert not parser.pending
    return out


def one_byte(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


@pytest.mark.parametrize("label,wire,expected", GOOD, ids=[g[0] for g in GOOD])
@pytest.mark.parametrize("feeding", ["whole", "one_byte"])
def test_good_requests(label, wire, expected, feeding):
    chunks = [wire] if feeding == "whole" else one_byte(wire)
    assert feed_all(chunks) == expected


@pytest.mark.parametrize("label,wire,message", BAD, ids=[b[0] for b in BAD])
@pytest.mark.parametrize("feeding", ["whole", "one_byte"])
def test_malformed_requests_raise(label, wire, message, feeding):
    parser = RequestParser(max_line_bytes=64, max_attributes=10)
    chunks = [wire] if feeding == "whole" else one_byte(wire)
    with pytest.raises(ProtocolError, match=message):
        for chunk in chunks:
            parser.feed(chunk)


def test_partial_request_is_pending_until_blank_line():
    parser = RequestParser()
    assert parser.feed(b"a=1\nb=") == []
    assert parser.pending
    assert parser.feed(b"2\n\n") == [{"a": "1", "b": "2"}]
    assert not parser.pending


def test_reply_cannot_be_split_by_newlines_in_text():
    assert format_reply("DEFER 4.7.1 a\nb\r\n") == b"action=DEFER 4.7.1 a b  \n\n"


@pytest.mark.parametrize("action", ["DUNNO", "DEFER_IF_PERMIT 4.7.1 Greylisted, wait 300 seconds",
                                    "PREPEND X-Greylist: delayed 301 seconds"])
def test_reply_roundtrip(action):
    assert parse_reply(format_reply(action)) == action


def test_request_roundtrip():
    attrs = {"request": "smtpd_access_policy", "sender": "a@b", "recipient": "c@d"}
    assert RequestParser().feed(format_request(attrs)) == [attrs]


@pytest.mark.parametrize("text", ["plain", "Wietse Venema", "a+b=c", "CN=Jörg,O=x"])
def test_xtext_roundtrip(text):
    assert xtext_decode(xtext_encode(text)) == text


def test_xtext_invalid_escape_left_alone():
    assert xtext_decode("a+zz") == "a+zz"


def test_random_bytes_never_escape_as_anything_but_protocol_error():
    import random

    rng = random.Random(20261121)
    alphabet = b"ab=\n\r\x00\xff+0 "
    for _ in range(3000):
        parser = RequestParser(max_line_bytes=32, max_attributes=8)
        data = bytes(rng.choice(alphabet) for _ in range(rng.randrange(1, 80)))
        try:
            for i in range(0, len(data), rng.randrange(1, 8)):
                for req in parser.feed(data[i:i + 8]):
                    assert isinstance(req, dict) and all(isinstance(v, str) for v in req.values())
        except ProtocolError:
            pass
