"""The offline checks, as tables of labelled messages."""

from __future__ import annotations

import asyncio
import email.utils

import pytest

from smtpproxy.scan.checks.base import CheckContext
from smtpproxy.scan.checks.gtube import GTUBE, GtubeCheck
from smtpproxy.scan.checks.headers import HeadersCheck
from smtpproxy.scan.checks.mime import MimeCheck
from smtpproxy.scan.message import parse
from smtpproxy.transaction import ClientInfo

NOW = 1_800_000_000.0
DATE = email.utils.formatdate(NOW)
GOOD = (f"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: Lunch on Friday\r\n"
        f"Date: {DATE}\r\nMessage-ID: <1@example.org>\r\nReceived: from a by b\r\n\r\nHello Bob\r\n")


def run(check, raw: bytes | str, mail_from="alice@example.org", helo="mail.example.org"):
    if isinstance(raw, str):
        raw = raw.encode()
    ctx = CheckContext(message=parse(raw), client=ClientInfo(addr="192.0.2.1", helo=helo),
                       mail_from=mail_from, rcpt_tos=["bob@example.net"], profile="inbound",
                       resolver=None)
    return {hit.symbol: hit.options for hit in asyncio.run(check.run(ctx))}


def without(header: str) -> str:
    return "".join(line + "\r\n" for line in GOOD.split("\r\n")[:-1]
                   if not line.startswith(header + ":"))


HEADER_CASES = [
    ("clean message", GOOD, {}, {}),
    ("no Message-ID", without("Message-ID"), {}, {"MISSING_MID": ()}),
    ("no Date", without("Date"), {}, {"MISSING_DATE": ()}),
    ("garbage Date", GOOD.replace(DATE, "yesterday-ish"), {}, {"INVALID_DATE": ()}),
    ("date a day ahead", GOOD.replace(DATE, email.utils.formatdate(NOW + 86400)), {},
     {"DATE_IN_FUTURE": ("24h",)}),
    ("date a month old", GOOD.replace(DATE, email.utils.formatdate(NOW - 30 * 86400)), {},
     {"DATE_IN_PAST": ("30d",)}),
    # Dates are judged against when the message arrived: its topmost Received
    # field's date (mail scanned later, an archive), never later than now.
    ("old mail scanned later", "Received: from a by b; " + email.utils.formatdate(NOW - 400 * 86400)
     + "\r\n" + GOOD.replace(DATE, email.utils.formatdate(NOW - 400 * 86400 - 3600)), {}, {}),
    ("old date, received now", "Received: from a by b; " + email.utils.formatdate(NOW)
     + "\r\n" + GOOD.replace(DATE, email.utils.formatdate(NOW - 30 * 86400)), {},
     {"DATE_IN_PAST": ("30d",)}),
    ("a Received date ahead of now does not excuse a future Date",
     "Received: from a by b; " + email.utils.formatdate(NOW + 5 * 86400) + "\r\n"
     + GOOD.replace(DATE, email.utils.formatdate(NOW + 86400)), {}, {"DATE_IN_FUTURE": ("24h",)}),
    ("no From", without("From"), {}, {"MISSING_FROM": ()}),
    ("two From", "From: x@example.org\r\n" + GOOD, {"mail_from": "x@example.org"},
     {"MULTIPLE_FROM": ("2",)}),
    ("two addresses in one From", GOOD.replace("From: Alice <alice@example.org>",
                                               "From: Alice <alice@example.org>, mallory@example.net"),
     {"mail_from": "alice@example.org"},
     {"MULTIPLE_FROM": ("alice@example.org", "mallory@example.net")}),
    ("a comma in the display name is one address", GOOD.replace(
        "From: Alice <alice@example.org>", 'From: "Liddell, Alice" <alice@example.org>'),
     {"mail_from": "alice@example.org"}, {}),
    ("no To", without("To"), {}, {"MISSING_TO": ()}),
    ("no Subject", without("Subject"), {}, {"MISSING_SUBJECT": ()}),
    ("capital subject", GOOD.replace("Lunch on Friday", "FREE MONEY FOR YOU NOW!!!"), {},
     {"SUBJ_ALL_CAPS": ()}),
    ("short capital subject is fine", GOOD.replace("Lunch on Friday", "RE: FYI"), {}, {}),
    ("envelope differs from From", GOOD, {"mail_from": "bounce@lists.example.com"},
     {"FORGED_SENDER": ("alice@example.org", "bounce@lists.example.com")}),
    ("null sender is not forged", GOOD, {"mail_from": ""}, {}),
    ("HELO bare IP", GOOD, {"helo": "[192.0.2.1]"}, {"HELO_BAREIP": ("[192.0.2.1]",)}),
    ("HELO one label", GOOD, {"helo": "localhost"}, {"HELO_NOT_FQDN": ("localhost",)}),
    ("no Received", without("Received"), {}, {"RCVD_COUNT_ZERO": ()}),
    ("many Received", "Received: x\r\n" * 12 + GOOD, {}, {"RCVD_COUNT_MANY": ("13",)}),
]


@pytest.mark.parametrize("label, raw, kwargs, expected", HEADER_CASES, ids=[c[0] for c in HEADER_CASES])
def test_headers_check(label, raw, kwargs, expected):
    assert run(HeadersCheck(clock=lambda: NOW), raw, **kwargs) == expected


class Multipart:
    """multipart/KIND built from parts; ``format`` keeps the table readable."""

    @staticmethod
    def format(kind: str, parts: list[str]) -> str:
        return ("From: a@example.org\r\nTo: b@example.net\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
                f'Content-Type: multipart/{kind}; boundary="b"\r\n\r\n--b\r\n'
                + "\r\n--b\r\n".join(parts) + "\r\n--b--\r\n")


MULTIPART = Multipart


def part(ctype: str, body: str, filename: str | None = None) -> list[str]:
    disp = f'Content-Disposition: attachment; filename="{filename}"\r\n' if filename else ""
    return [f"Content-Type: {ctype}\r\n{disp}\r\n{body}"]


MIME_CASES = [
    ("text only", MULTIPART.format(kind="mixed", parts=part("text/plain", "hello there")), {}),
    ("html only", MULTIPART.format(kind="mixed", parts=part("text/html", "<p>hello</p>")),
     {"MIME_HTML_ONLY": ()}),
    ("alternatives agree", MULTIPART.format(kind="alternative", parts=(
        part("text/plain", "Meeting moved to three o'clock tomorrow")
        + part("text/html", "<p>Meeting moved to <b>three</b> o'clock tomorrow</p>"))), {}),
    ("alternatives differ", MULTIPART.format(kind="alternative", parts=(
        part("text/plain", "Meeting moved to three o'clock tomorrow")
        + part("text/html", "<p>Cheap pills, best prices, order online today</p>"))),
     {"R_PARTS_DIFFER": ("100%",)}),
    ("executable attachment is not this check's", MULTIPART.format(kind="mixed", parts=(
        part("text/plain", "see attached") + part("application/octet-stream", "TVqQ", "setup.exe"))),
     {}),
    ("a forwarded message's html is not the text's alternative", MULTIPART.format(kind="mixed", parts=(
        part("text/plain", "Meeting moved to three o'clock tomorrow")
        + ["Content-Type: message/rfc822\r\n\r\nSubject: fwd\r\nContent-Type: text/html\r\n\r\n"
           "<p>Cheap pills, best prices, order online today</p>\r\n"])), {}),
    ("a message forwarded alone is judged by its own parts", MULTIPART.format(kind="mixed", parts=(
        ["Content-Type: message/rfc822\r\n\r\nSubject: fwd\r\nContent-Type: text/html\r\n\r\n"
         "<p>Cheap pills</p>\r\n"])), {"MIME_HTML_ONLY": ()}),
    ("html and calendar alternatives", MULTIPART.format(kind="alternative", parts=(
        part("text/html", "<p>Team meeting</p>")
        + part("text/calendar; method=REQUEST", "BEGIN:VCALENDAR\r\nEND:VCALENDAR"))), {}),
    ("harmless attachment", MULTIPART.format(kind="mixed", parts=(
        part("text/plain", "report") + part("application/pdf", "JVBE", "report.pdf"))), {}),
    ("missing closing boundary",
     "From: a@example.org\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\n"
     "Content-Type: text/plain\r\n\r\ncut off\r\n",
     {"MIME_BAD": ("CloseBoundaryNotFoundDefect",)}),
]


@pytest.mark.parametrize("label, raw, expected", MIME_CASES, ids=[c[0] for c in MIME_CASES])
def test_mime_check(label, raw, expected):
    assert run(MimeCheck(), raw) == expected


def test_gtube_found_in_body_only_when_present():
    assert run(GtubeCheck(), GOOD) == {}
    assert run(GtubeCheck(), GOOD.encode() + GTUBE + b"\r\n") == {"GTUBE": ()}


@pytest.mark.parametrize("raw", [
    b"", b"\r\n", b"no headers at all", b"\xff\xfe\x00garbage\r\n\r\n\x00",
    b"Subject: =?bogus-charset?B?AAAA?=\r\n\r\nx", b"Content-Type: multipart/mixed\r\n\r\nno boundary",
    b"From: \"unterminated <x@\r\nDate: Mon, 99 Foo 2024 99:99:99 +9999\r\n\r\n",
])
def test_malformed_input_never_raises(raw):
    for check in (HeadersCheck(), MimeCheck(), GtubeCheck()):
        run(check, raw)


URL_TEXTS = [
    "see http://a.example/x and https://B.example/y, www.c.example.",
    "xhttp://no.example _www.no.example 9www.no.example HTTP://YES.example Www.Yes.example",
    '<a href="http://h.example/p">x</a> <A HREF = \'/rel\'> href=bare.example hrefhref=x',
    "http:// www. href= wwwww.example.org http://http://twice.example",
    "non-ASCII: caf\u00e9 http://\u00e9.example httpſ://s.example and \u212a www.k.example",
    "",
]


@pytest.mark.parametrize("text", URL_TEXTS)
def test_url_search_finds_what_the_regexes_find(text):
    from smtpproxy.scan.message import HREF_RE, URL_RE, find_urls
    assert find_urls(text) == URL_RE.findall(text) + HREF_RE.findall(text)


@pytest.mark.parametrize("a, b", [
    ("the cat sat on the mat", "the cat sat"),
    ("a b c", "x y z"),
    ("", ""),
    ("word " * 5000 + "tail", "word " * 10 + "tail"),
    ("Mixed CASE words " * 3, "mixed case WORDS"),
])
def test_text_html_similarity_is_difflibs_quick_ratio(a, b):
    import difflib

    from smtpproxy.scan.checks.mime import MAX_COMPARED_WORDS, WORD_RE, _similarity
    wa = WORD_RE.findall(a.lower())[:MAX_COMPARED_WORDS]
    wb = WORD_RE.findall(b.lower())[:MAX_COMPARED_WORDS]
    expected = difflib.SequenceMatcher(None, wa, wb, autojunk=False).quick_ratio() if wa or wb else 1.0
    assert _similarity(a, b) == pytest.approx(expected)


@pytest.mark.parametrize("value", [
    "a@example.org", "  A.B@Example.ORG ", "John Doe <j@example.org>", "J. O'Neil <j@x.example>",
    "<j@example.org>", "Name<a@example.org>", "a..b@example.org", ".a@example.org", "a@example.",
    "Doe, John <j@example.org>", "x <a@example.org> y", "a@example.org (comment)",
    '"Quoted" <a@example.org>', "a@example.org, b@example.net", "<a@example.org", "<>",
    "a@[192.0.2.1]", "no address", "",
])
def test_address_fast_path_agrees_with_parseaddr(value):
    from smtpproxy.scan.message import parse_address
    assert parse_address(value) == email.utils.parseaddr(value)[1]


def test_a_from_field_too_long_for_the_address_parser_is_read_so_far():
    # The shape of mimekit's stack-overflow.txt: parseaddr recurses once per "." token,
    # so only the field's first MAX_FROM_CHARS are parsed: the address before the cut.
    raw = (b'From: "x" <x@example.org>,date>' + b"2017-08-20T10:08:28.617</prdate>" * 2400
           + b"\r\nSubject: s\r\n\r\nbody\r\n")
    assert parse(raw).from_address == "x@example.org"
    # Without an address before the cut there is none.
    raw = b"From: date>" + b"2017-08-20T10:08:28.617</prdate>" * 2400 + b"\r\n\r\nbody\r\n"
    assert parse(raw).from_address == ""
