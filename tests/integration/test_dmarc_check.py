"""DmarcCheck: the authheaders DMARC cases, then policy selection, alignment, pct, ARC override, DNS trouble.

Everything over loopback DNS (tests.support.dns_server) through the
project's Resolver; the public suffix list is Debian's
(/usr/share/publicsuffix/public_suffix_list.dat, package publicsuffix).

The authheaders cases (../shared/corpora/dmarc/authheaders/CASES.json, 12):
each message goes through DkimCheck (when the case runs "dkim") and
DmarcCheck; a case's ``prior_results`` (DKIM results given as input) become
the DKIM facts instead. Compared, as CASES.json says: the dmarc= result,
header.from, and policy.dmarc for pass/fail (authheaders prints
policy.dmarc=none beside permerror; we leave the policy out when no policy
was read). The DNS table is served as given: ``_dmarc`` names hold TXT,
``""`` is a name without TXT; a non-``_dmarc`` name with a value (``""`` or
a host name) is a name that exists, served as an A record, and ``null`` is
NXDOMAIN. No name outside the table is queried (asserted, as upstream's
resolver does).

Exceptions: none.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from smtpproxy.common.config import Config, DmarcConfig, DnsConfig, ScanConfig
from smtpproxy.common.dns import Resolver
from smtpproxy.scan.checks.base import CheckContext, Hit
from smtpproxy.scan.checks.dkim import DkimCheck
from smtpproxy.scan.checks.dmarc import DmarcCheck, author_domains
from smtpproxy.scan.message import parse
from smtpproxy.transaction import ClientInfo
from tests.support.dns_server import DnsTestServer

pytestmark = pytest.mark.integration

AUTHHEADERS = Path(__file__).resolve().parents[3] / "shared" / "corpora" / "dmarc" / "authheaders"
CASES = json.loads((AUTHHEADERS / "CASES.json").read_text()) if AUTHHEADERS.exists() else {
    "dns_txt": {}, "cases": [], "from_header_domain_extraction": []}


def _authheaders_records() -> dict:
    records: dict[str, list] = {}
    for name, value in CASES["dns_txt"].items():
        if isinstance(value, dict):
            records[name] = [("TXT", (AUTHHEADERS / value["file"]).read_text().strip())]
        elif value is None:
            continue  # NXDOMAIN
        elif name.startswith("_dmarc.") or "._domainkey." in name:
            if value:
                records[name] = [("TXT", value)]
            # "": the name exists without TXT; for TXT that answers as no record.
        else:
            records[name] = [("A", "192.0.2.1")]  # the name exists
    return records


def _prior_dkim(prior: str) -> list[dict]:
    sigs = []
    for result, domain in re.findall(r"dkim=(\w+) header\.d=([\w.-]+)", prior or ""):
        sigs.append({"result": result, "domain": domain, "selector": "", "algorithm": "",
                     "reason": ""})
    return sigs


def _expected(text: str) -> dict:
    part = text.split("dmarc=", 1)[1] if "dmarc=" in text else ""
    result = re.match(r"(\w+)", part).group(1)
    header_from = re.search(r"header\.from=(\S+)", part)
    policy = re.search(r"policy\.dmarc=(\w+)", part)
    return {"result": result, "header_from": header_from.group(1) if header_from else None,
            "policy": policy.group(1) if policy else None}


@pytest.fixture(scope="module")
def authheaders_dns():
    with DnsTestServer(_authheaders_records()) as srv:
        yield srv


def make_context(raw: bytes, resolver, mail_from: str = "") -> CheckContext:
    return CheckContext(message=parse(raw), client=ClientInfo(addr="192.0.2.1", helo="x"),
                        mail_from=mail_from, rcpt_tos=[], profile="inbound", resolver=resolver)


def test_the_cases_are_there():
    assert AUTHHEADERS.exists(), f"{AUTHHEADERS} missing: the corpora are read from ../shared/corpora"
    assert len(CASES["cases"]) == 12


@pytest.mark.parametrize("case", CASES["cases"], ids=lambda c: c["message"] + ":" + "+".join(c["checks"]))
def test_authheaders_case(authheaders_dns, case):
    server = authheaders_dns
    raw = (AUTHHEADERS / case["message"]).read_bytes()
    before = len(server.queries)

    async def go():
        resolver = Resolver(DnsConfig(nameserver=server.nameserver, timeout_s=0.5, attempts=1))
        ctx = make_context(raw, resolver)
        dkim_hits = dmarc_hits = None
        if "dkim" in case["checks"]:
            dkim_hits = await DkimCheck(Config()).run(ctx)
        elif case.get("prior_results"):
            ctx.facts["dkim"] = {"signatures": _prior_dkim(case["prior_results"])}
        if "dmarc" in case["checks"]:
            dmarc_hits = await DmarcCheck(Config()).run(ctx)
        return ctx, dkim_hits, dmarc_hits

    ctx, dkim_hits, dmarc_hits = asyncio.run(go())
    if "dkim" in case["checks"]:
        want = re.search(r"dkim=(\w+) header\.d=([\w.]+)", case["expect"]).groups()
        assert [(s["result"], s["domain"]) for s in ctx.facts["dkim"]["signatures"]] == [want]
    if "dmarc" in case["checks"]:
        want = _expected(case["expect"])
        facts = ctx.facts["dmarc"]
        assert facts["result"] == want["result"], (facts, dmarc_hits)
        assert (facts["domain"] or "none") == (want["header_from"] or facts["domain"] or "none")
        if want["result"] in ("pass", "fail"):
            assert facts["policy"] == want["policy"]
        (hit,) = dmarc_hits
        assert hit.symbol == {"pass": "DMARC_POLICY_ALLOW", "none": "DMARC_NA",
                              "permerror": ("DMARC_NA" if not facts["domain"] else "DMARC_BAD_POLICY"),
                              "fail": {"reject": "DMARC_POLICY_REJECT",
                                       "quarantine": "DMARC_POLICY_QUARANTINE",
                                       "none": "DMARC_POLICY_SOFTFAIL"}.get(want["policy"])
                              }[want["result"]]
    asked = {name.rstrip(".") for name, _t, _tr in list(server.queries)[before:]}
    assert asked <= {n.lower() for n in CASES["dns_txt"]}, asked
    assert server.errors == []


@pytest.mark.parametrize("value, domain", CASES["from_header_domain_extraction"])
def test_authheaders_from_domain_extraction(value, domain):
    assert author_domains(f"From: {value}\r\nTo: x@example.net\r\n\r\nbody\r\n".encode()) == [domain]


# ---------------------------------------------------------------- our own cases

RECORDS = {
    "_dmarc.reject.test": [("TXT", "v=DMARC1; p=reject; rua=mailto:d@reject.test")],
    "_dmarc.strict.test": [("TXT", "v=DMARC1; p=reject; adkim=s; aspf=s")],
    "_dmarc.half.test": [("TXT", "v=DMARC1; p=reject; pct=50")],
    "_dmarc.quar.test": [("TXT", "v=DMARC1; p=quarantine; pct=0")],
    "_dmarc.none.test": [("TXT", "v=DMARC1; p=none")],
    "_dmarc.two.test": [("TXT", "v=DMARC1; p=reject"), ("TXT", "v=DMARC1; p=none")],
    "_dmarc.badtag.test": [("TXT", "v=DMARC1; p=reject; adkim=x")],
    "_dmarc.notfirst.test": [("TXT", "v=DMARC1; p=bogus; rua=mailto:d@notfirst.test")],
    "_dmarc.other.test": [("TXT", "some unrelated text"), ("TXT", "v=DMARC1; p=reject")],
    "_dmarc.psd.test": [("TXT", "v=DMARC1; p=none; sp=quarantine; np=reject; psd=y")],
    "exists.org.psd.test": [("A", "192.0.2.1")],
    "_dmarc.nopsd.test": [("TXT", "v=DMARC1; p=reject")],
}

PSL = "// test list\nnopsd.test\npsd.test\n*.wild.test\n!www.wild.test\ntest\n"


@pytest.fixture(scope="module")
def dns():
    with DnsTestServer(RECORDS) as srv:
        srv.drop("_dmarc.slow.test")
        srv.servfail("_dmarc.broken.test")
        yield srv


@pytest.fixture(scope="module")
def psl_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("psl") / "psl.dat"
    path.write_text(PSL)
    return str(path)


def dmarc_check(psl_file: str, **kw) -> DmarcCheck:
    return DmarcCheck(Config(scan=ScanConfig(dmarc=DmarcConfig(public_suffix_list=psl_file, **kw))))


def run_dmarc(dns, check, from_domain, dkim=(), spf=None, arc=None, draw=0.0):
    raw = f"From: Someone <someone@{from_domain}>\r\nSubject: t\r\n\r\nbody\r\n".encode()

    async def go():
        resolver = Resolver(DnsConfig(nameserver=dns.nameserver, timeout_s=0.3, attempts=1))
        ctx = make_context(raw, resolver)
        ctx.facts["dkim"] = {"signatures": [{"result": r, "domain": d, "selector": "s"}
                                            for d, r in dkim]}
        if spf:
            ctx.facts["spf"] = {"result": spf[1], "domain": spf[0], "identity": "mailfrom"}
        if arc:
            ctx.facts["arc"] = arc
        check.random = lambda: draw
        hits = await check.run(ctx)
        return hits, ctx.facts["dmarc"]
    return asyncio.run(go())


@pytest.mark.parametrize("label, from_domain, dkim, spf, hit, result, policy", [
    ("aligned dkim, same domain", "reject.test", [("reject.test", "pass")], None,
     Hit("DMARC_POLICY_ALLOW", ("reject.test", "dkim=reject.test")), "pass", "reject"),
    ("relaxed: dkim of a subdomain aligns", "reject.test", [("mail.reject.test", "pass")], None,
     Hit("DMARC_POLICY_ALLOW", ("reject.test", "dkim=mail.reject.test")), "pass", "reject"),
    ("relaxed: spf of a subdomain aligns", "reject.test", [], ("bounce.reject.test", "pass"),
     Hit("DMARC_POLICY_ALLOW", ("reject.test", "spf=bounce.reject.test")), "pass", "reject"),
    ("unaligned dkim pass fails", "reject.test", [("other.test", "pass")], ("other.test", "pass"),
     Hit("DMARC_POLICY_REJECT", ("reject.test", "policy=reject")), "fail", "reject"),
    ("aligned dkim that failed does not count", "reject.test", [("reject.test", "fail")], None,
     Hit("DMARC_POLICY_REJECT", ("reject.test", "policy=reject")), "fail", "reject"),
    ("strict: subdomain dkim does not align", "strict.test", [("mail.strict.test", "pass")],
     ("mail.strict.test", "pass"),
     Hit("DMARC_POLICY_REJECT", ("strict.test", "policy=reject")), "fail", "reject"),
    ("strict: exact dkim aligns", "strict.test", [("strict.test", "pass")], None,
     Hit("DMARC_POLICY_ALLOW", ("strict.test", "dkim=strict.test")), "pass", "reject"),
    ("p=none fails softly", "none.test", [], None,
     Hit("DMARC_POLICY_SOFTFAIL", ("none.test", "policy=none")), "fail", "none"),
    ("no record", "norecord.test", [], None, Hit("DMARC_NA", ("norecord.test",)), "none", ""),
    ("two records: no policy", "two.test", [], None, Hit("DMARC_NA", ("two.test",)), "none", ""),
    ("unrelated TXT beside the record is ignored", "other.test", [], None,
     Hit("DMARC_POLICY_REJECT", ("other.test", "policy=reject")), "fail", "reject"),
    ("bad adkim value", "badtag.test", [], None,
     Hit("DMARC_BAD_POLICY", ("badtag.test", "bad adkim=x")), "permerror", ""),
    ("bad p= with rua: read as p=none (RFC 7489 6.6.3)", "notfirst.test", [], None,
     Hit("DMARC_POLICY_SOFTFAIL", ("notfirst.test", "policy=none")), "fail", "none"),
    ("subdomain uses the org record's p", "a.b.reject.test", [], None,
     Hit("DMARC_POLICY_REJECT", ("a.b.reject.test", "policy=reject")), "fail", "reject"),
    ("PSD record (RFC 9091): org domain gets p", "org.psd.test", [], None,
     Hit("DMARC_POLICY_SOFTFAIL", ("org.psd.test", "policy=none")), "fail", "none"),
    ("PSD record: existing subdomain gets sp", "exists.org.psd.test", [], None,
     Hit("DMARC_POLICY_QUARANTINE", ("exists.org.psd.test", "policy=quarantine")), "fail",
     "quarantine"),
    ("PSD record: non-existent subdomain gets np (RFC 9091)", "nx.org.psd.test", [], None,
     Hit("DMARC_POLICY_REJECT", ("nx.org.psd.test", "policy=reject")), "fail", "reject"),
    ("no psd=y: the suffix's record is not used", "org.nopsd.test", [], None,
     Hit("DMARC_NA", ("org.nopsd.test",)), "none", ""),
])
def test_policy(dns, psl_file, label, from_domain, dkim, spf, hit, result, policy):
    hits, facts = run_dmarc(dns, dmarc_check(psl_file), from_domain, dkim, spf)
    assert hits == [hit]
    assert (facts["result"], facts["policy"]) == (result, policy)
    assert dns.errors == []


def test_psd_lookup_can_be_turned_off(dns, psl_file):
    hits, facts = run_dmarc(dns, dmarc_check(psl_file, psd=False), "org.psd.test")
    assert hits == [Hit("DMARC_NA", ("org.psd.test",))]


@pytest.mark.parametrize("label, domain, draw, hit", [
    ("pct=50, in the sample", "half.test", 0.49,
     Hit("DMARC_POLICY_REJECT", ("half.test", "policy=reject"))),
    ("pct=50, out of the sample: quarantine", "half.test", 0.5,
     Hit("DMARC_POLICY_QUARANTINE", ("half.test", "policy=reject", "applied=quarantine (pct=50)"))),
    ("pct=0: quarantine becomes none", "quar.test", 0.0,
     Hit("DMARC_POLICY_SOFTFAIL", ("quar.test", "policy=quarantine", "applied=none (pct=0)"))),
])
def test_pct_sampling(dns, psl_file, label, domain, draw, hit):
    hits, facts = run_dmarc(dns, dmarc_check(psl_file), domain, draw=draw)
    assert hits == [hit]
    assert facts["result"] == "fail"


@pytest.mark.parametrize("label, arc, trusted, symbol", [
    ("trusted sealer overrides", {"result": "pass", "sealers": ["lists.example.org", "x.test"]},
     ("example.org",), "DMARC_POLICY_ALLOW"),
    ("untrusted newest sealer", {"result": "pass", "sealers": ["evil.test", "lists.example.org"]},
     ("example.org",), "DMARC_POLICY_REJECT"),
    ("failed chain", {"result": "fail", "sealers": ["lists.example.org"]},
     ("example.org",), "DMARC_POLICY_REJECT"),
    ("no trusted list", {"result": "pass", "sealers": ["lists.example.org"]}, (),
     "DMARC_POLICY_REJECT"),
    ("lookalike is not a subdomain", {"result": "pass", "sealers": ["badexample.org"]},
     ("example.org",), "DMARC_POLICY_REJECT"),
])
def test_trusted_arc_sealer_overrides_a_failure(dns, psl_file, label, arc, trusted, symbol):
    check = dmarc_check(psl_file, trusted_arc_sealers=trusted)
    hits, facts = run_dmarc(dns, check, "reject.test", arc=arc)
    assert hits[0].symbol == symbol
    assert facts["result"] == "fail"  # the result is reported; only the policy is not enforced
    if symbol == "DMARC_POLICY_ALLOW":
        assert hits[0].options == ("reject.test", "arc=lists.example.org", "policy=reject")
        assert facts["override"] == "arc=lists.example.org"


@pytest.mark.parametrize("domain, reason", [
    ("slow.test", "timeout"),
    ("broken.test", "SERVFAIL"),
])
def test_dns_trouble_is_dnsfail(dns, psl_file, domain, reason):
    hits, facts = run_dmarc(dns, dmarc_check(psl_file), domain)
    (hit,) = hits
    assert hit.symbol == "DMARC_DNSFAIL" and reason in hit.options[1]
    assert facts["result"] == "temperror"


@pytest.mark.parametrize("label, dkim, spf, reason", [
    ("aligned dkim key lookup failed", [("reject.test", "temperror")], None, "dkim=reject.test temperror"),
    ("aligned spf temperror", [], ("reject.test", "temperror"), "spf=reject.test temperror"),
])
def test_aligned_temperror_is_not_enforced(dns, psl_file, label, dkim, spf, reason):
    hits, facts = run_dmarc(dns, dmarc_check(psl_file), "reject.test", dkim, spf)
    assert hits == [Hit("DMARC_DNSFAIL", ("reject.test", reason))]
    assert facts["result"] == "temperror"


def test_unaligned_temperror_still_fails(dns, psl_file):
    hits, facts = run_dmarc(dns, dmarc_check(psl_file), "reject.test", [("other.test", "temperror")])
    assert hits[0].symbol == "DMARC_POLICY_REJECT"


def test_signed_message_without_dkim_facts_is_not_enforced(dns, psl_file):
    raw = b"DKIM-Signature: v=1; d=reject.test\r\nFrom: a@reject.test\r\n\r\nbody\r\n"

    async def go():
        resolver = Resolver(DnsConfig(nameserver=dns.nameserver, timeout_s=0.3, attempts=1))
        ctx = make_context(raw, resolver)  # the DKIM check timed out: no facts
        return await dmarc_check(psl_file).run(ctx)
    assert asyncio.run(go()) == [Hit("DMARC_DNSFAIL", ("reject.test", "dkim not evaluated"))]


def test_worst_of_several_from_domains(dns, psl_file):
    raw = b"From: a@none.test, b@reject.test\r\n\r\nbody\r\n"

    async def go():
        resolver = Resolver(DnsConfig(nameserver=dns.nameserver, timeout_s=0.3, attempts=1))
        ctx = make_context(raw, resolver)
        ctx.facts["dkim"] = {"signatures": [{"result": "pass", "domain": "none.test"}]}
        return await dmarc_check(psl_file).run(ctx), ctx.facts["dmarc"]
    hits, facts = asyncio.run(go())
    assert hits == [Hit("DMARC_POLICY_REJECT", ("reject.test", "policy=reject"))]
    assert facts["domain"] == "reject.test"


def test_no_from_domain(dns, psl_file):
    async def go():
        ctx = make_context(b"Subject: no from\r\n\r\nbody\r\n", None)
        return await dmarc_check(psl_file).run(ctx), ctx.facts["dmarc"]
    hits, facts = asyncio.run(go())
    assert hits == [Hit("DMARC_NA", ("no From domain",))] and facts["result"] == "permerror"


def test_missing_public_suffix_list_names_the_key(tmp_path):
    from smtpproxy.common.config import ConfigError
    with pytest.raises(ConfigError) as err:
        dmarc_check(str(tmp_path / "nope.dat"))
    assert err.value.key == "scan.dmarc.public_suffix_list"


# ---------------------------------------------------------------- through the engine

ENGINE_RECORDS = {
    "test._domainkey.example.com": [("TXT", (AUTHHEADERS.parent.parent / "dkim" / "dkimpy" / "test.txt")
                                     .read_text().strip() if AUTHHEADERS.exists() else "")],
    "_dmarc.example.com": [("TXT", "v=DMARC1; p=reject")],
    "example.com": [("TXT", "v=spf1 ip4:192.0.2.0/24 -all"), ("A", "192.0.2.1")],
}


@pytest.mark.parametrize("label, signed, addr, symbols, ar", [
    ("signed, SPF pass: DKIM and DMARC pass", True, "192.0.2.7",
     {"R_DKIM_ALLOW", "DMARC_POLICY_ALLOW", "ARC_NA", "R_SPF_ALLOW"},
     ["dkim=pass header.d=example.com", "dmarc=pass header.from=example.com policy.dmarc=reject",
      "arc=none"]),
    ("unsigned, SPF fail: DMARC reject", False, "198.51.100.1",
     {"R_DKIM_NA", "DMARC_POLICY_REJECT", "ARC_NA", "R_SPF_FAIL"},
     ["dkim=none", "dmarc=fail header.from=example.com policy.dmarc=reject"]),
])
def test_through_the_engine(label, signed, addr, symbols, ar):
    import dkim as dkimpy

    from smtpproxy.scan.checks.all import all_checks
    from smtpproxy.scan.engine import Engine
    from smtpproxy.scan.results import authentication_results

    raw = (b"From: Test <test@example.com>\r\nTo: x@example.net\r\nSubject: hello\r\n"
           b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n\r\nHello.\r\n")
    if signed:
        key = (AUTHHEADERS.parent.parent / "dkim" / "dkimpy" / "test.private").read_bytes()
        raw = dkimpy.sign(raw, b"test", b"example.com", key) + raw
    with DnsTestServer(ENGINE_RECORDS) as server:
        cfg = Config()
        engine = Engine(cfg.scan, all_checks(cfg))

        async def go():
            resolver = Resolver(DnsConfig(nameserver=server.nameserver, timeout_s=0.5, attempts=1))
            ctx = CheckContext(message=parse(raw), client=ClientInfo(addr=addr, helo="mail.example.com"),
                               mail_from="bounce@example.com", rcpt_tos=["x@example.net"],
                               profile="inbound", resolver=resolver)
            return await engine.scan(ctx)
        result = asyncio.run(go())
    assert symbols <= set(result.symbols), result.summary()
    value = authentication_results("mx.example.net", result.facts)
    for part in ar:
        assert part in value, value
