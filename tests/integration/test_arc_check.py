"""ArcCheck as the engine uses it: symbols with evidence, facts, DNS trouble.

Chains are sealed here with dkimpy's arc_sign and the ValiMail suite's test
key (the same 1024-bit key as dkimpy's test.private), served by the loopback
test DNS server.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import dkim
import pytest

from smtpproxy.common.config import Config, DnsConfig
from smtpproxy.common.dns import Resolver
from smtpproxy.scan.checks.arc import ArcCheck
from smtpproxy.scan.checks.base import CheckContext, Hit
from smtpproxy.scan.message import parse
from smtpproxy.transaction import ClientInfo
from tests.support.dns_server import DnsTestServer

pytestmark = pytest.mark.integration

DKIMPY = Path(__file__).resolve().parents[3] / "shared" / "corpora" / "dkim" / "dkimpy"
KEY = (DKIMPY / "test.private").read_bytes() if DKIMPY.exists() else b""
TXT = (DKIMPY / "test.txt").read_text().strip() if DKIMPY.exists() else ""

MESSAGE = (b"From: John Q Doe <jqd@d1.example.org>\r\nTo: arc@dmarc.org\r\n"
           b"Subject: Example 1\r\nDate: Thu, 14 Jan 2015 15:00:01 -0800\r\n"
           b"Message-ID: <54B84785.1060301@d1.example.org>\r\n\r\nHey gang,\r\nThis is a test.\r\n")


def seal(raw: bytes, domain: str, selector: str = "sel", srv_id: str = "lists.example.org",
         arc: str = "") -> bytes:
    """One ARC set; ``arc`` is the chain result the sealer records (cv=) for an earlier chain."""
    results = "spf=pass smtp.mailfrom=d1.example.org" + (f"; arc={arc}" if arc else "")
    raw = f"Authentication-Results: {srv_id}; {results}\r\n".encode() + raw
    fields = dkim.arc_sign(raw, selector.encode(), domain.encode(), KEY, srv_id.encode())
    return b"".join(fields) + raw


@pytest.fixture(scope="module")
def server():
    records = {f"sel._domainkey.{d}": [("TXT", TXT)] for d in ("example.org", "list.example.net")}
    with DnsTestServer(records) as srv:
        srv.drop("slow._domainkey.example.org")
        yield srv


def run(server, raw: bytes, check: ArcCheck | None = None):
    async def go():
        resolver = Resolver(DnsConfig(nameserver=server.nameserver, timeout_s=0.3, attempts=1))
        ctx = CheckContext(message=parse(raw), client=ClientInfo(addr="192.0.2.1", helo="x"),
                           mail_from="", rcpt_tos=[], profile="inbound", resolver=resolver)
        hits = await (check or ArcCheck(Config())).run(ctx)
        return hits, ctx.facts["arc"]
    return asyncio.run(go())


def test_no_chain_is_na(server):
    hits, facts = run(server, MESSAGE)
    assert hits == [Hit("ARC_NA")]
    assert facts["result"] == "none" and facts["sealers"] == []


def test_one_seal_passes_and_names_the_sealer(server):
    hits, facts = run(server, seal(MESSAGE, "example.org"))
    assert hits == [Hit("ARC_ALLOW", ("example.org:i=1",))]
    assert facts["result"] == "pass" and facts["sealers"] == ["example.org"]
    assert facts["as_domain"] == "example.org" and facts["ams_domain"] == "example.org"


def test_two_seals_newest_first(server):
    hits, facts = run(server, seal(seal(MESSAGE, "example.org"), "list.example.net",
                                   srv_id="mx.list.example.net", arc="pass"))
    assert hits == [Hit("ARC_ALLOW", ("list.example.net:i=2", "example.org:i=1"))]
    assert facts["sealers"] == ["list.example.net", "example.org"]


def test_body_changed_after_sealing_rejects(server):
    hits, facts = run(server, seal(MESSAGE, "example.org") + b"appended\r\n")
    assert facts["result"] == "fail"
    assert hits[0].symbol == "ARC_REJECT"


def test_missing_key_rejects(server):
    hits, facts = run(server, seal(MESSAGE, "example.org", selector="nokey"))
    assert facts["result"] == "fail" and hits[0].symbol == "ARC_REJECT"


def test_incomplete_set_is_invalid(server):
    sealed = seal(MESSAGE, "example.org")
    # Drop the ARC-Seal field (dkimpy folds it: its continuation lines too).
    out, skipping = [], False
    for line in sealed.splitlines(True):
        if line.startswith(b"ARC-Seal"):
            skipping = True
            continue
        if skipping and line[:1] in (b" ", b"\t"):
            continue
        skipping = False
        out.append(line)
    without_seal = b"".join(out)
    hits, facts = run(server, without_seal)
    assert facts["result"] == "fail"
    assert hits[0].symbol == "ARC_INVALID" and "Incomplete ARC set" in hits[0].options[0]


def test_key_lookup_timeout_is_dnsfail(server):
    hits, facts = run(server, seal(MESSAGE, "example.org", selector="slow"))
    assert facts["result"] == "temperror"
    assert hits[0].symbol == "ARC_DNSFAIL" and "slow._domainkey.example.org" in hits[0].options[0]


def test_no_resolver_is_na():
    async def go():
        ctx = CheckContext(message=parse(seal(MESSAGE, "example.org")),
                           client=ClientInfo(addr="192.0.2.1", helo="x"), mail_from="",
                           rcpt_tos=[], profile="inbound", resolver=None)
        return await ArcCheck().run(ctx), ctx.facts["arc"]
    hits, facts = asyncio.run(go())
    assert hits == [Hit("ARC_NA", ("no resolver",))] and facts["result"] == "none"
