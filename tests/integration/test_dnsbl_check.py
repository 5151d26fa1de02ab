"""DnsblCheck against the loopback DNS server serving the list zones, through the Resolver.

Listed, not listed, IPv6 nibbles, bitmask lists, registrable domains, the
per-message cap, refused and unknown codes, and a timeout as DNSFAIL that
the engine turns into a soft reject.
"""

from __future__ import annotations

import asyncio

import pytest

from smtpproxy.common import config
from smtpproxy.common.config import DnsConfig
from smtpproxy.common.dns import Resolver
from smtpproxy.scan.checks.all import all_checks
from smtpproxy.scan.checks.base import CheckContext, Hit
from smtpproxy.scan.checks.dnsbl import DnsblCheck
from smtpproxy.scan.engine import Engine
from smtpproxy.scan.message import parse
from smtpproxy.transaction import ClientInfo
from tests.support.dns_server import DnsTestServer

pytestmark = pytest.mark.integration

V6 = "2001:db8::1"
V6_NAME = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"

ZONES = [
    {"zone": "ip.bl.test", "kind": "ip", "ipv6": True, "returncodes": {
        "T_RBL_SBL": ["127.0.0.2"], "T_RBL_XBL": ["127.0.0.4", "127.0.0.5"],
        "T_RBL_PBL": ["127.0.0.10"]}},
    {"zone": "v4only.bl.test", "kind": "ip", "returncodes": {"T_RBL_V4": ["127.0.0.2"]}},
    {"zone": "dbl.test", "kind": "domain", "blocked_codes": ["127.0.1.255"], "returncodes": {
        "T_DBL_SPAM": ["127.0.1.2"], "T_DBL_PHISH": ["127.0.1.4"]}},
    {"zone": "uribl.test", "kind": "domain", "blocked_codes": ["127.0.0.1"], "urls": True,
     "envelope_sender": False, "header_from": False, "url_ips": True,
     "bits": {"T_URIBL_BLACK": 2, "T_URIBL_GREY": 4}},
    {"zone": "full.test", "kind": "domain", "registrable_domain": False,
     "envelope_sender": False, "header_from": False, "returncodes": {"T_FULL": ["127.0.0.2"]}},
]
SCORES = {"T_RBL_SBL": 4.0, "T_RBL_XBL": 4.0, "T_RBL_PBL": 2.0, "T_RBL_V4": 1.0, "T_DBL_SPAM": 6.5,
          "T_DBL_PHISH": 6.5, "T_URIBL_BLACK": 7.5, "T_URIBL_GREY": 1.5, "T_FULL": 1.0}
for zone in ZONES:
    zone["scores"] = {s: SCORES[s] for s in (*zone.get("returncodes", {}), *zone.get("bits", {}))}

RECORDS = {
    # client addresses
    "7.2.0.192.ip.bl.test": [("A", "127.0.0.2")],
    "8.2.0.192.ip.bl.test": [("A", "127.0.0.4"), ("A", "127.0.0.10")],
    "9.2.0.192.ip.bl.test": [("A", "127.0.0.99")],
    "10.2.0.192.ip.bl.test": [("A", "127.255.255.254")],
    "11.2.0.192.ip.bl.test": [("A", "198.51.100.80")],  # a resolver rewriting NXDOMAIN
    "7.2.0.192.v4only.bl.test": [("A", "127.0.0.2")],
    f"{V6_NAME}.ip.bl.test": [("A", "127.0.0.5")],
    f"{V6_NAME}.v4only.bl.test": [("A", "127.0.0.2")],  # never asked: the zone is IPv4 only
    # domains
    "spam.test.dbl.test": [("A", "127.0.1.2")],
    "phish.test.dbl.test": [("A", "127.0.1.4")],
    "example.co.uk.dbl.test": [("A", "127.0.1.2")],
    "blocked.test.dbl.test": [("A", "127.0.1.255")],
    "spam.test.uribl.test": [("A", "127.0.0.6")],  # black + grey
    "refused.test.uribl.test": [("A", "127.0.0.1")],
    "5.113.0.203.uribl.test": [("A", "127.0.0.2")],
    "www.host.test.full.test": [("A", "127.0.0.2")],
    "host.test.full.test": [("A", "127.0.0.2")],  # asked only with the full host name
}


@pytest.fixture(scope="module")
def server():
    with DnsTestServer(RECORDS) as srv:
        srv.drop("12.2.0.192.ip.bl.test")
        srv.drop("slow.test.dbl.test")
        srv.servfail("13.2.0.192.ip.bl.test")
        yield srv


def cfg(**overrides):
    return config.load(None, {"scan.dnsbl.zones": ZONES, "scan.dnsbl.exclude_networks": ["10.0.0.0/8"],
                              **overrides})


def message(from_addr="alice@clean.test", body="Hello"):
    return parse(f"From: {from_addr}\r\nSubject: x\r\n\r\n{body}\r\n".encode())


def context(server, addr="198.51.100.1", mail_from="alice@clean.test", msg=None, profile="inbound",
            timeout_s=0.5):
    resolver = Resolver(DnsConfig(nameserver=server.nameserver, timeout_s=timeout_s, attempts=1))
    return CheckContext(message=msg or message(), client=ClientInfo(addr=addr, helo="mx.clean.test"),
                        mail_from=mail_from, rcpt_tos=["bob@example.net"], profile=profile,
                        resolver=resolver)


def run(server, check=None, **kw) -> dict[str, tuple[str, ...]]:
    hits = asyncio.run((check or DnsblCheck(cfg())).run(context(server, **kw)))
    out: dict[str, tuple[str, ...]] = {}
    for hit in hits:
        out[hit.symbol] = out.get(hit.symbol, ()) + hit.options
    return out


@pytest.mark.parametrize("label, addr, expected", [
    ("listed", "192.0.2.7", {"T_RBL_SBL": ("192.0.2.7 127.0.0.2",), "T_RBL_V4": ("192.0.2.7 127.0.0.2",)}),
    ("two codes, two symbols", "192.0.2.8",
     {"T_RBL_XBL": ("192.0.2.8 127.0.0.4",), "T_RBL_PBL": ("192.0.2.8 127.0.0.10",)}),
    ("not listed (NXDOMAIN)", "192.0.2.1", {}),
    ("IPv6 reversed nibbles; an IPv4-only list not asked", f"IPv6:{V6}",
     {"T_RBL_XBL": (f"{V6} 127.0.0.5",)}),
    ("code outside the map", "192.0.2.9", {"RBL_UNKNOWN_RESULT": ("ip.bl.test 192.0.2.9 127.0.0.99",)}),
    ("query refused", "192.0.2.10", {"RBL_BLOCKED": ("ip.bl.test 127.255.255.254",)}),
    ("not a 127/8 answer", "192.0.2.11", {"RBL_UNKNOWN_RESULT": ("ip.bl.test 192.0.2.11 198.51.100.80",)}),
    ("excluded network never asked", "10.1.2.3", {}),
    ("no client address", "[UNAVAILABLE]", {}),
])
def test_client_address(server, label, addr, expected):
    assert run(server, addr=addr) == expected, label


@pytest.mark.parametrize("label, addr, reason", [
    ("timeout", "192.0.2.12", "timeout"),
    ("servfail", "192.0.2.13", "SERVFAIL"),
])
def test_dns_trouble_is_dnsfail(server, label, addr, reason):
    (option,) = run(server, addr=addr)["RBL_DNSFAIL"]
    assert option.startswith(f"ip.bl.test {addr} ") and reason in option, label


@pytest.mark.parametrize("label, mail_from, from_addr, body, expected", [
    ("envelope sender domain", "x@spam.test", "a@clean.test", "hi",
     {"T_DBL_SPAM": ("spam.test 127.0.1.2",)}),
    ("From domain", "x@clean.test", "a@phish.test", "hi", {"T_DBL_PHISH": ("phish.test 127.0.1.4",)}),
    ("URL reduced to the registrable domain", "", "a@clean.test",
     "see http://www.a.example.co.uk/x", {"T_DBL_SPAM": ("example.co.uk 127.0.1.2",)}),
    ("bitmask: two bits, two symbols; sender not asked of this list", "", "a@clean.test",
     "https://x.spam.test/", {"T_DBL_SPAM": ("spam.test 127.0.1.2",),
                              "T_URIBL_BLACK": ("spam.test 127.0.0.6",),
                              "T_URIBL_GREY": ("spam.test 127.0.0.6",)}),
    ("URL with an IP address, reversed", "", "a@clean.test", "http://203.0.113.5/login",
     {"T_URIBL_BLACK": ("203.0.113.5 127.0.0.2",)}),
    ("full host name where the list wants it", "", "a@clean.test", "http://www.host.test/",
     {"T_FULL": ("www.host.test 127.0.0.2",)}),
    ("zone's own blocked code", "x@blocked.test", "a@clean.test", "hi",
     {"URIBL_BLOCKED": ("dbl.test 127.0.1.255",)}),
    ("URIBL's refused answer", "", "a@clean.test", "http://refused.test/",
     {"URIBL_BLOCKED": ("uribl.test 127.0.0.1",)}),
    ("clean", "x@clean.test", "a@clean.test", "http://www.clean.test/", {}),
])
def test_domains(server, label, mail_from, from_addr, body, expected):
    got = run(server, addr="192.0.2.1", mail_from=mail_from, msg=message(from_addr, body))
    assert got == expected, label


def test_domain_timeout_is_uribl_dnsfail(server):
    (option,) = run(server, addr="192.0.2.1", mail_from="x@slow.test")["URIBL_DNSFAIL"]
    assert option.startswith("dbl.test slow.test ") and "timeout" in option


def test_at_most_max_domains_per_list(server):
    body = " ".join(f"http://d{i}.test/" for i in range(30)) + " http://spam.test/"
    before = len(server.queries)
    got = run(server, DnsblCheck(cfg(**{"scan.dnsbl.max_domains": 5})), addr="192.0.2.1",
              mail_from="x@clean.test", msg=message("a@clean.test", body))
    assert got == {}  # spam.test is the 32nd domain: never asked
    asked = [q for q in list(server.queries)[before:] if q[0].endswith(".dbl.test.")]
    assert len(asked) == 5  # sender's clean.test first, then four URL domains


def test_excluded_domains_never_asked(server):
    check = DnsblCheck(cfg(**{"scan.dnsbl.exclude_domains": ["spam.test"]}))
    assert run(server, check, addr="192.0.2.1", mail_from="x@sub.spam.test") == {}


@pytest.mark.parametrize("label, overrides, profile", [
    ("outbound profile not checked", {}, "outbound"),
    ("disabled", {"scan.dnsbl.enabled": False}, "inbound"),
])
def test_not_run(server, label, overrides, profile):
    assert run(server, DnsblCheck(cfg(**overrides)), addr="192.0.2.7", profile=profile) == {}, label


def test_no_resolver_reports_nothing():
    ctx = CheckContext(message=message(), client=ClientInfo(addr="192.0.2.7"), mail_from="x@spam.test",
                       rcpt_tos=[], profile="inbound", resolver=None)
    assert asyncio.run(DnsblCheck(cfg()).run(ctx)) == []


@pytest.mark.parametrize("label, addr, action, symbol", [
    ("listed client scores", "192.0.2.7", "greylist", "T_RBL_SBL"),
    ("DNS timeout soft-rejects", "192.0.2.12", "soft reject", "RBL_DNSFAIL"),
])
def test_through_the_engine(server, label, addr, action, symbol):
    c = cfg()
    engine = Engine(c.scan, [DnsblCheck(c)])
    result = asyncio.run(engine.scan(context(server, addr=addr)))
    assert symbol in result.symbols and result.action == action, (label, result.summary())


def test_shipped_zones_answered_locally(server):
    """The default lists as configured, with their real names served by the test server."""
    server.add("4.2.0.192.zen.spamhaus.org", "A", "127.0.0.4")
    server.add("dbltest.com.dbl.spamhaus.org", "A", "127.0.1.2")  # Spamhaus's DBL test domain
    server.add("uribl-listed.com.multi.uribl.com", "A", "127.0.0.14")
    c = config.load(None, {"scan.dnsbl.exclude_networks": []})
    hits = asyncio.run(DnsblCheck(c).run(context(
        server, addr="192.0.2.4", mail_from="a@dbltest.com",
        msg=message("a@clean.test", "http://www.uribl-listed.com/"))))
    assert set(hits) == {
        Hit("RBL_SPAMHAUS_XBL", ("192.0.2.4 127.0.0.4",)),
        Hit("DBL_SPAM", ("dbltest.com 127.0.1.2",)),
        Hit("URIBL_BLACK", ("uribl-listed.com 127.0.0.14",)),
        Hit("URIBL_GREY", ("uribl-listed.com 127.0.0.14",)),
        Hit("URIBL_RED", ("uribl-listed.com 127.0.0.14",)),
    }
    Engine(c.scan, all_checks(c))  # every shipped symbol has a score
