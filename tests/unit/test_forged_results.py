"""Forged verdicts, hidden fields, hostile envelopes and hostile structure: the scan's side.

Each test is named after the failure it pins: a sender's Authentication-Results
passing as ours (parsed with authres, not pattern-matched), a field hidden
behind a bare LF or CR, an envelope address that is not UTF-8, and a message
whose structure costs more to parse than it is worth. Through real Postfix:
tests/integration/test_forgery_postfix.py.
"""

from __future__ import annotations

import asyncio

import pytest

from smtpproxy.common import config
from smtpproxy.common.store import open_store
from smtpproxy.headers import prepend_headers, remove_headers, split_fields
from smtpproxy.scan.checks.base import CheckContext
from smtpproxy.scan.checks.headers import HeadersCheck
from smtpproxy.scan.engine import Engine, SymbolDef
from smtpproxy.scan.greylist import greylist
from smtpproxy.scan.hook import EngineHook
from smtpproxy.scan.message import (
    MAX_BOUNDARY_LINES,
    MAX_CONTAINERS,
    MAX_HEADER_FIELDS,
    MAX_PARTS,
    parse,
)
from smtpproxy.scan.results import is_own_authres
from smtpproxy.sign.arc import with_arc_result
from smtpproxy.transaction import ClientInfo, Transaction
from tests.support.hostile import header_flood, mime_flood, nested_mime

OURS = "proxy.test"
BODY = b"From: a@example.org\r\nSubject: hi\r\n\r\nbody\r\n"


def txn(content: bytes, mail_from="a@example.org", rcpt_tos=("b@example.net",)) -> Transaction:
    return Transaction(session_id="S", listener="inbound", profile="inbound", client=ClientInfo(),
                       mail_from=mail_from, mail_options=[], rcpt_tos=list(rcpt_tos),
                       rcpt_options=[[] for _ in rcpt_tos], content=content)


def accepted(content: bytes, **scan) -> bytes:
    """What the delivery pipeline would send downstream for an accepted message."""
    cfg = config.load(None, {f"scan.{k}": v for k, v in scan.items()})
    symbols = {"CHECK_TIMEOUT": SymbolDef(0.0, "t"), "CHECK_ERROR": SymbolDef(0.0, "e")}
    hook = EngineHook(cfg, Engine(cfg.scan, [], symbols), None, None, OURS)
    verdict = asyncio.run(hook.scan(txn(content)))
    assert verdict.action == "accept"
    return prepend_headers(remove_headers(content, verdict.remove_headers, verdict.remove_matching),
                           verdict.add_headers)


# ---------------------------------------------------------------- D3: our authserv-id, parsed

FORGED = [
    ("plain", b"proxy.test; dkim=pass header.d=paypal.com"),
    ("comment before our id", b"(comment) proxy.test; dkim=pass header.d=paypal.com"),
    ("version after our id", b"proxy.test 1; dmarc=pass header.from=paypal.com"),
    ("other case, folded", b"PROXY.Test;\r\n\tdkim=pass header.d=paypal.com"),
    ("comment after our id", b"proxy.test (trust me) ; spf=pass smtp.mailfrom=paypal.com"),
    ("unparseable, names us", b"proxy.test.; dkim=pass header.d=paypal.com (broken"),
    ("only our id", b"proxy.test"),
]
FOREIGN = [
    ("other id", b"mx.paypal.com; dkim=pass header.d=paypal.com"),
    ("our id as a suffix", b"evil-proxy.test; dkim=pass header.d=paypal.com"),
    ("our id inside a result", b"upstream.example; spf=pass smtp.mailfrom=proxy.test"),
]


@pytest.mark.parametrize("label,value", FORGED, ids=[x[0] for x in FORGED])
def test_forged_authres_with_our_parsed_authserv_id_is_ours(label, value):
    assert is_own_authres(value, OURS)


@pytest.mark.parametrize("label,value", FOREIGN, ids=[x[0] for x in FOREIGN])
def test_authres_of_other_authserv_ids_is_not_ours(label, value):
    assert not is_own_authres(value, OURS)


def test_forged_authres_with_comment_before_our_id_is_removed():
    out = accepted(b"Authentication-Results: (comment) proxy.test; dkim=pass header.d=paypal.com\r\n"
                   + BODY)
    assert b"paypal.com" not in out
    assert out.count(b"Authentication-Results: proxy.test;") == 1


def test_forged_authres_with_version_after_our_id_is_removed():
    out = accepted(b"Authentication-Results: proxy.test 1; dmarc=pass header.from=paypal.com\r\n"
                   + BODY)
    assert b"paypal.com" not in out


def test_foreign_authres_is_kept_byte_for_byte():
    field = b"Authentication-Results: mx.paypal.com;\r\n dkim=pass header.d=paypal.com\r\n"
    out = accepted(field + BODY)
    assert field in out


def test_forged_authres_is_not_merged_into_the_sealed_results():
    raw = (b"Authentication-Results: (comment) proxy.test; dkim=pass header.d=paypal.com\r\n"
           b"Authentication-Results: proxy.test 1; dmarc=pass header.from=paypal.com\r\n"
           b"Authentication-Results: other.example; spf=pass smtp.mailfrom=a.example\r\n" + BODY)
    out = with_arc_result(raw, OURS, "none")
    assert b"paypal.com" not in out
    assert out.startswith(b"Authentication-Results: proxy.test;\r\n\tarc=none\r\n")
    assert b"Authentication-Results: other.example; spf=pass" in out


def test_sealed_results_are_what_the_scan_verified():
    raw = (b"Authentication-Results: proxy.test; spf=pass smtp.mailfrom=example.org\r\n"
           b"Authentication-Results: proxy.test; dkim=pass header.d=paypal.com\r\n" + BODY)
    out = with_arc_result(raw, OURS, "pass", verified="proxy.test; spf=pass smtp.mailfrom=example.org")
    assert out.startswith(b"Authentication-Results: proxy.test;\r\n\tspf=pass smtp.mailfrom=example.org;"
                          b"\r\n\tarc=pass\r\n")
    assert b"paypal.com" not in out and out.count(b"Authentication-Results") == 1


# ---------------------------------------------------------------- D6: bare LF and bare CR


@pytest.mark.parametrize("eol", [b"\n", b"\r"], ids=["bare LF", "bare CR"])
def test_forged_authres_behind_bare_lf_is_removed(eol):
    raw = (b"Subject: hi" + eol + b"Authentication-Results: proxy.test; dkim=pass header.d=paypal.com"
           + eol + b"X-Spam-Status: No, forged" + b"\r\nFrom: a@example.org\r\n\r\nbody\r\n")
    out = accepted(raw)
    assert b"paypal.com" not in out and b"forged" not in out
    assert b"Subject: hi" + eol in out and b"From: a@example.org\r\n\r\nbody\r\n" in out


@pytest.mark.parametrize("raw,fields,end", [
    (b"A: 1\r\nB: 2\r\n\r\nbody", [b"A: 1\r\n", b"B: 2\r\n"], 12),
    (b"A: 1\nB: 2\n\nbody\r\n", [b"A: 1\n", b"B: 2\n"], 10),
    (b"A: 1\rB: 2\r\rbody", [b"A: 1\r", b"B: 2\r"], 10),
    (b"A: 1\r\n x\ny\rB: 2\r\n\r\n", [b"A: 1\r\n x\n", b"y\r", b"B: 2\r\n"], 17),
    (b"A: 1\n\tfolded\r\nB: 2\r\n\nbody", [b"A: 1\n\tfolded\r\n", b"B: 2\r\n"], 20),
    (b"A: 1", [b"A: 1\r\n"], 4),
    (b"\r\nbody", [], 0),
    (b"\nbody", [], 0),
], ids=["crlf", "lf", "cr", "mixed", "folded after lf", "no end", "no headers", "no headers lf"])
def test_header_splitter_sees_every_line_end(raw, fields, end):
    assert split_fields(raw) == (fields, end)


def test_fields_not_removed_keep_every_byte():
    raw = b"A: 1\n\tx\rB: 2\r\nC: 3\n\nbody\rwith\nbare ends\r\n"
    assert remove_headers(raw, ["B"]) == b"A: 1\n\tx\rC: 3\n\nbody\rwith\nbare ends\r\n"


# ---------------------------------------------------------------- D7: envelope bytes not UTF-8

BAD_SENDER = b"\xff\xfeuser@example.org".decode("utf-8", "surrogateescape")
BAD_RCPT = b"b\xe9b@example.net".decode("utf-8", "surrogateescape")


def test_non_utf8_envelope_sender_is_scanned_not_deferred_forever(tmp_path):
    # No Message-ID scores 5: greylisting, whose key hashes the envelope.
    async def go():
        store = open_store(config.StoreConfig(), str(tmp_path))
        await store.open()
        try:
            cfg = config.load(None, {"scan.greylist_delay_s": 0.001})
            symbols = {"CHECK_TIMEOUT": SymbolDef(0.0, "t"), "CHECK_ERROR": SymbolDef(0.0, "e")}
            symbols.update({name: SymbolDef(0.0, name) for name in HeadersCheck.symbols})
            symbols["MISSING_MID"] = SymbolDef(5.0, "no Message-ID")
            hook = EngineHook(cfg, Engine(cfg.scan, [HeadersCheck()], symbols), store, None, OURS)
            first = await hook.scan(txn(BODY, mail_from=BAD_SENDER, rcpt_tos=[BAD_RCPT]))
            await asyncio.sleep(0.01)
            retry = await hook.scan(txn(BODY, mail_from=BAD_SENDER, rcpt_tos=[BAD_RCPT]))
            return first, retry
        finally:
            await store.close()

    first, retry = asyncio.run(go())
    assert (first.action, first.reply) == ("tempfail", "451 4.7.1 Greylisted, please try again later") \
        or (first.action == "tempfail" and "greylist=deferred" in first.summary)
    assert retry.action == "accept" and "FORGED_SENDER" in retry.symbols


def test_non_utf8_envelope_is_greylisted_like_any_other(tmp_path):
    async def go():
        store = open_store(config.StoreConfig(), str(tmp_path))
        await store.open()
        try:
            scan = config.load(None, {"scan.greylist_delay_s": 0.001}).scan
            first = await greylist(store, scan, txn(BODY, mail_from=BAD_SENDER, rcpt_tos=[BAD_RCPT]))
            await asyncio.sleep(0.01)
            again = await greylist(store, scan, txn(BODY, mail_from=BAD_SENDER, rcpt_tos=[BAD_RCPT]))
            return first, again
        finally:
            await store.close()

    first, again = asyncio.run(go())
    assert first is None and again is not None


def test_non_utf8_envelope_reaches_checks_log_and_headers_as_text():
    cfg = config.load(None, {})
    symbols = {"CHECK_TIMEOUT": SymbolDef(0.0, "t"), "CHECK_ERROR": SymbolDef(0.0, "e")}
    symbols.update({name: SymbolDef(0.0, name) for name in HeadersCheck.symbols})
    hook = EngineHook(cfg, Engine(cfg.scan, [HeadersCheck()], symbols), None, None, OURS)
    verdict = asyncio.run(hook.scan(txn(BODY, mail_from=BAD_SENDER, rcpt_tos=[BAD_RCPT])))
    verdict.summary.encode("utf-8")  # the log line
    for _name, value in verdict.add_headers:
        value.encode("ascii")
    assert "\ufffd\ufffduser@example.org" in verdict.summary


# ---------------------------------------------------------------- D11: bounded parsing

def _parsed(raw: bytes, monkeypatch) -> tuple:
    """(the Message, the bytes the email package was handed)."""
    import email

    from smtpproxy.scan import message

    seen: list[bytes] = []

    def spy(data, *args, **kwargs):
        seen.append(data)
        return email.message_from_bytes(data, *args, **kwargs)

    monkeypatch.setattr(message, "message_from_bytes", spy)
    msg = message.parse(raw)
    assert len(seen) == 1
    return msg, seen[0]


def test_million_header_fields_are_bounded(monkeypatch):
    raw = header_flood(MAX_HEADER_FIELDS * 20)
    msg, handed = _parsed(raw, monkeypatch)
    assert "TooManyHeaderFields" in msg.defects
    assert len(msg.headers) <= MAX_HEADER_FIELDS and handed.count(b"\n") <= MAX_HEADER_FIELDS + 10
    assert msg.raw is raw


def test_hundreds_of_thousands_of_mime_parts_are_bounded(monkeypatch):
    raw = mime_flood(MAX_BOUNDARY_LINES * 20)
    msg, handed = _parsed(raw, monkeypatch)
    assert "TooManyParts" in msg.defects and len(msg.parts) <= MAX_PARTS
    assert handed.count(b"\n--") <= MAX_BOUNDARY_LINES


def test_deep_mime_nesting_is_bounded(monkeypatch):
    raw = nested_mime(5000)
    msg, handed = _parsed(raw, monkeypatch)
    assert "TooManyContainers" in msg.defects
    assert handed.count(b"Content-Type:") <= MAX_CONTAINERS + 1
    assert msg.headers and msg.from_address == "mallory@example.org"


def test_bounded_message_gets_mime_bad_not_a_crash():
    from smtpproxy.scan.checks.mime import MimeCheck

    ctx = CheckContext(message=parse(mime_flood(MAX_PARTS * 50)), client=ClientInfo(),
                       mail_from="", rcpt_tos=[], profile="inbound", resolver=None)
    hits = asyncio.run(MimeCheck().run(ctx))
    (bad,) = [h for h in hits if h.symbol == "MIME_BAD"]
    assert "TooManyParts" in bad.options
