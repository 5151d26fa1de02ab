"""The ValiMail ARC validation suite through ArcCheck, the Resolver and a real DNS server.

Every case of ../shared/corpora/arc/valimail-arc_test_suite/tests/
arc-draft-validation-tests.yml (10 scenarios, 171 cases) runs the project's
ARC check (smtpproxy.scan.checks.arc) with the project's resolver asking
the loopback test DNS server, which serves the scenario's ``txt-records``
exactly as written (the suite's multi-line key records keep their line
breaks, which DKIM key-record parsing treats as folding whitespace).

The chain result is compared with the case's ``cv``:

    cv: Pass -> pass     cv: Fail -> fail     cv: None -> none
    cv: ""   -> fail

An empty ``cv`` is the suite's "the chain already failed" (a sealer
recorded cv=fail; the suite's dkimpy runner prints nothing for dkimpy's
"chain terminated" result). RFC 8617 5.2: a chain with an ARC-Seal cv=fail
has failed, so the Authentication-Results value is arc=fail.

The symbol is checked too: pass -> ARC_ALLOW, none -> ARC_NA (or
ARC_INVALID for ARC fields without any usable instance), fail ->
ARC_REJECT or ARC_INVALID.

Exceptions: each is listed in XFAIL with its RFC reason (strict xfail: a
case that starts passing fails the run, so the list stays true).
"""

from __future__ import annotations

import asyncio

import pytest

from smtpproxy.common.config import Config, DnsConfig
from smtpproxy.common.dns import Resolver
from smtpproxy.scan.checks.arc import ArcCheck
from smtpproxy.scan.checks.base import CheckContext
from smtpproxy.scan.message import parse
from smtpproxy.transaction import ClientInfo
from tests.support import yaml_suites
from tests.support.dns_server import DnsTestServer

pytestmark = pytest.mark.integration

SUITE = (yaml_suites.CORPORA / "arc" / "valimail-arc_test_suite" / "tests"
         / "arc-draft-validation-tests.yml")

EXPECTED = {"Pass": "pass", "Fail": "fail", "None": "none", "": "fail", None: "fail"}

# test name -> RFC reason it is expected to fail.
XFAIL: dict[str, str] = {}


SCENARIOS = yaml_suites.scenarios(SUITE)


@pytest.fixture(scope="module")
def dns_server():
    with DnsTestServer() as server:
        yield server


@pytest.fixture(scope="module")
def check():
    return ArcCheck(Config())


async def _run(check: ArcCheck, nameserver: str, raw: bytes):
    resolver = Resolver(DnsConfig(nameserver=nameserver, timeout_s=0.5, attempts=1))
    ctx = CheckContext(message=parse(raw), client=ClientInfo(addr="192.0.2.1", helo="x"),
                       mail_from="", rcpt_tos=[], profile="inbound", resolver=resolver)
    hits = await check.run(ctx)
    return hits, ctx.facts["arc"]


def test_the_suite_is_there():
    assert SUITE.exists(), f"{SUITE} missing: the corpora are read from ../shared/corpora"
    assert sum(len(s["tests"]) for s in SCENARIOS) == 171


@pytest.mark.parametrize("index, name, case", list(yaml_suites.cases(SCENARIOS, XFAIL)))
def test_arc_validation(dns_server, check, index, name, case):
    dns_server.clear()
    for record, value in SCENARIOS[index].get("txt-records", {}).items():
        dns_server.add(record, "TXT", value)
    raw = (case["message"] or "").encode("utf-8")
    hits, facts = asyncio.run(_run(check, dns_server.nameserver, raw))
    want = EXPECTED[case.get("cv")]
    assert facts["result"] == want, (case.get("spec"), case.get("description"), hits)
    (hit,) = hits
    allowed = {"pass": {"ARC_ALLOW"}, "none": {"ARC_NA", "ARC_INVALID"},
               "fail": {"ARC_REJECT", "ARC_INVALID"}}[want]
    assert hit.symbol in allowed
    assert dns_server.errors == []
