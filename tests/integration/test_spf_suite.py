"""The OpenSPF RFC 7208 test suite through SpfCheck, the Resolver and a real DNS server.

Every case of ../shared/corpora/spf/openspf-pyspf/rfc7208-tests.yml runs the
project's SPF check (smtpproxy.scan.checks.spf) with the project's resolver
(smtpproxy.common.dns) asking the loopback test DNS server
(tests.support.dns_server), which serves the scenario's zonedata. Nothing is
mocked between pyspf and the wire.

Zone data follows the suite's reference driver (pyspf's test/testspf.py):
- ``SPF`` records are also served as TXT when the name has no ``TXT`` entry
  ("auto-magic duplication"); ``TXT: NONE`` only stops that.
- ``TIMEOUT`` as a value times out queries of that type; ``TIMEOUT`` as an
  entry times out every type without an entry before it. The server drops
  those queries, so the resolver really times out (timeout_s is short here to
  keep the suite quick; nothing asserts on time).
- Non-ASCII test bytes, written as ``\\x`` escapes, go on the wire UTF-8 encoded
  as the reference driver passes them to pyspf.
- An expected explanation of ``DEFAULT`` means pyspf's default text for the result.

Exceptions: none; every case passes (see docs/dns-spf.md). A case that ever
needs one gets its own xfail entry in XFAIL below, with the RFC reason.
"""

from __future__ import annotations

import asyncio

import pytest
import spf

from smtpproxy.common.config import DnsConfig
from smtpproxy.common.dns import Resolver
from smtpproxy.scan.checks.base import CheckContext
from smtpproxy.scan.checks.spf import SpfCheck
from smtpproxy.transaction import ClientInfo
from tests.support import yaml_suites
from tests.support.dns_server import DnsTestServer

SUITE = yaml_suites.CORPORA / "spf" / "openspf-pyspf" / "rfc7208-tests.yml"

# Every type pyspf queries; a bare TIMEOUT entry drops all of them but those listed before it.
QUERY_TYPES = ("A", "AAAA", "MX", "PTR", "TXT", "SPF", "CNAME")

# test name -> RFC reason it is expected to fail. Empty: the whole suite passes.
XFAIL: dict[str, str] = {}

pytestmark = pytest.mark.integration


SCENARIOS = yaml_suites.scenarios(SUITE)


def _rdata_value(rtype: str, value):
    if rtype == "MX":
        pref, host = value
        return f"{pref} {str(host).rstrip('.')}." if host else f"{pref} ."
    if rtype in ("PTR", "CNAME"):
        return str(value).rstrip(".") + "."
    return value  # A/AAAA text; TXT/SPF text or list of strings


def load_zonedata(server: DnsTestServer, zonedata: dict) -> None:
    """Serve one scenario's zonedata the way the suite's reference driver answers it."""
    for name, entries in zonedata.items():
        has_txt = any(isinstance(e, dict) and "TXT" in e for e in entries)
        answered: set[str] = set()
        generated: list = []
        bare_timeout = False
        for entry in entries:
            if entry == "TIMEOUT":
                bare_timeout = True
                break  # entries after it are never reached
            ((rtype, value),) = entry.items()
            if value == "TIMEOUT":
                server.drop(name, rtype)
                continue
            if value == "NONE" or value == []:
                continue  # "has this type, no record": only stops SPF->TXT duplication
            answered.add(rtype)
            server.add(name, rtype, _rdata_value(rtype, value))
            if rtype == "SPF" and not has_txt:
                generated.append(value)
        if bare_timeout:
            for rtype in QUERY_TYPES:
                if rtype not in answered:
                    server.drop(name, rtype)
        else:
            for value in generated:
                server.add(name, "TXT", value)


@pytest.fixture(scope="module")
def dns_server():
    with DnsTestServer() as server:
        yield server


@pytest.fixture(scope="module", params=["on loop", "thread"])
def spf_check(request):
    """Both ways pyspf runs: on the loop with the answers at hand, and in a worker thread."""
    return SpfCheck(on_loop=request.param == "on loop")


async def _run(check: SpfCheck, nameserver: str, case: dict):
    resolver = Resolver(DnsConfig(nameserver=nameserver, timeout_s=0.3, attempts=1))
    ctx = CheckContext(message=None, client=ClientInfo(addr=case["host"], helo=case.get("helo")),
                       mail_from=case.get("mailfrom") or "", rcpt_tos=[], profile="inbound",
                       resolver=resolver)
    hits = await check.run(ctx)
    return hits, ctx.facts["spf"]


def test_the_suite_is_there():
    assert SUITE.exists(), f"{SUITE} missing: the corpora are read from ../shared/corpora"
    assert sum(len(s["tests"]) for s in SCENARIOS) == 203


@pytest.mark.parametrize("index, name, case", list(yaml_suites.cases(SCENARIOS, XFAIL)))
def test_rfc7208(dns_server, spf_check, index, name, case):
    dns_server.clear()
    load_zonedata(dns_server, SCENARIOS[index]["zonedata"])
    hits, facts = asyncio.run(_run(spf_check, dns_server.nameserver, case))
    expected = case["result"] if isinstance(case["result"], list) else [case["result"]]
    assert facts["result"] in expected, (case.get("spec"), case.get("description"), hits)
    if "explanation" in case:
        want = case["explanation"]
        if want == "DEFAULT":
            want = spf.EXPLANATIONS[facts["result"]]
        assert facts["explanation"] == want
    assert dns_server.errors == []
    # The symbol mirrors the result.
    (hit,) = hits
    assert hit.symbol == {"pass": "R_SPF_ALLOW", "fail": "R_SPF_FAIL", "softfail": "R_SPF_SOFTFAIL",
                          "neutral": "R_SPF_NEUTRAL", "none": "R_SPF_NA",
                          "temperror": "R_SPF_DNSFAIL", "permerror": "R_SPF_PERMFAIL"}[facts["result"]]
