"""Multimap and DNSBL without a network: map formats, every map type, the symbols the
engine learns from config, DNSBL query names and the public suffix reduction."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from smtpproxy.common import config
from smtpproxy.common.config import ConfigError
from smtpproxy.scan.checks.all import all_checks
from smtpproxy.scan.checks.base import CheckContext, Hit
from smtpproxy.scan.checks.dnsbl import public_suffix_list, reversed_name
from smtpproxy.scan.checks.multimap import MultimapCheck, address_matches, compile_map, name_matches
from smtpproxy.scan.engine import Engine, load_symbols
from smtpproxy.scan.message import parse
from smtpproxy.scan.psl import PublicSuffixList
from smtpproxy.transaction import ClientInfo, parse_client_address

MESSAGE = (
    b"From: Alice <Alice@Example.ORG>\r\nTo: bob@example.net\r\nSubject: Cheap watches today\r\n"
    b"X-Mailer: BulkSender 3.1\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
    b"--b\r\nContent-Type: text/plain\r\n\r\n"
    b"Visit https://www.shop.bad-example.test/offer and claim your prize now.\r\n"
    b"--b\r\nContent-Type: application/octet-stream\r\n"
    b"Content-Disposition: attachment; filename=\"Invoice.PDF.exe\"\r\n\r\nMZ\r\n--b--\r\n"
)


def context(addr="192.0.2.7", helo="mail.example.org", mail_from="alice@example.org",
            rcpts=("bob@example.net",), raw=MESSAGE):
    return CheckContext(message=parse(raw), client=ClientInfo(addr=addr, helo=helo),
                        mail_from=mail_from, rcpt_tos=list(rcpts), profile="inbound", resolver=None)


# ------------------------------------------------------------------ file formats

@pytest.mark.parametrize("label, kind, text, value, expected", [
    ("address", "ip", "192.0.2.7\n", "192.0.2.7", True),
    ("network", "ip", "# comment\n192.0.2.0/24 trailing words\n", "192.0.2.200", True),
    ("outside the network", "ip", "192.0.2.0/25\n", "192.0.2.200", False),
    ("ipv6 network", "ip", "2001:db8::/32\n", "2001:db8:1::5", True),
    ("ipv6 as Postfix writes it", "ip", "IPv6:2001:db8::1\n", "2001:db8::1", True),
    ("address", "sender", "user@example.com\n", "USER@example.com", True),
    ("domain", "sender", "example.com\n", "anyone@example.com", True),
    ("domain is not its subdomains", "sender", "example.com\n", "a@sub.example.com", False),
    ("subdomains", "sender", ".example.com\n", "a@sub.example.com", True),
    ("subdomains, not the domain", "sender", ".example.com\n", "a@example.com", False),
    ("local part", "sender", "postmaster@\n", "postmaster@anywhere.test", True),
    ("null sender", "sender", "<>\n", "", True),
    ("null sender not listed", "sender", "example.com\n", "", False),
    ("regex", "sender", "/^bounce-\\d+@/\n", "bounce-42@lists.test", True),
    ("host", "helo", "mail.example.com\n", "MAIL.example.com", True),
    ("host suffix", "helo", ".dyn.example.net\n", "a-1-2.dyn.example.net", True),
    ("host regex", "url", "/^bit\\.ly$/\n", "bit.ly", True),
    ("glob", "attachment", "*.exe\n", "Invoice.PDF.EXE", True),
    ("glob is the whole name", "attachment", "invoice.pdf\n", "my-invoice.pdf.zip", False),
    ("phrase is a substring", "body", "claim your prize\n", "Please CLAIM YOUR PRIZE now", True),
    ("phrase with regex characters", "body", "50% off (today)\n", "get 50% off (today)!", True),
])
def test_map_formats(label, kind, text, value, expected):
    c = compile_map(text, kind, "test")
    if kind == "ip":
        got = c.has_ip(parse_client_address(value))
    elif kind in ("sender", "from", "rcpt"):
        got = address_matches(c, value)
    elif kind in ("helo", "url"):
        got = name_matches(c, value)
    else:
        got = any(r.search(value) for r in c.regexes)
    assert got is expected, label


def test_bad_lines_are_skipped_not_fatal(caplog):
    c = compile_map("192.0.2.300\n/unbalanced(/\n198.51.100.0/24\n", "ip", "blocked")
    assert c.has_ip(ipaddress.ip_address("198.51.100.1"))
    assert "blocked:1" in caplog.text and "blocked:2" in caplog.text


# ------------------------------------------------------------------ every map type

def multimap(tmp_path, maps, **kw) -> MultimapCheck:
    defs = []
    for i, (kind, text, extra) in enumerate(maps):
        path = tmp_path / f"map{i}"
        path.write_text(text)
        defs.append({"type": kind, "file": str(path), "symbol": f"MAP_{i}", "score": 1.0, **extra})
    cfg = config.load(None, {"scan.multimap.maps": defs, **kw})
    return MultimapCheck(cfg)


@pytest.mark.parametrize("label, kind, text, extra, ctx_kw, options", [
    ("client ip", "ip", "192.0.2.0/24\n", {}, {}, ("192.0.2.7",)),
    ("client ipv6 from XFORWARD", "ip", "2001:db8::/32\n", {}, {"addr": "IPv6:2001:db8::9"},
     ("2001:db8::9",)),
    ("client not listed", "ip", "198.51.100.0/24\n", {}, {}, None),
    ("envelope sender", "sender", "example.org\n", {}, {}, ("alice@example.org",)),
    ("null sender", "sender", "<>\n", {}, {"mail_from": ""}, ("<>",)),
    ("From address", "from", "alice@example.org\n", {}, {"mail_from": "x@elsewhere.test"},
     ("alice@example.org",)),
    ("From domain", "from", "example.org\n", {}, {}, ("alice@example.org",)),
    ("one recipient of several", "rcpt", "carol@example.net\n", {},
     {"rcpts": ("bob@example.net", "carol@example.net")}, ("carol@example.net",)),
    ("helo", "helo", ".example.org\n", {}, {}, ("mail.example.org",)),
    ("header regex", "header", "/cheap\\s+watches/\n", {"header": "Subject"}, {},
     ("Cheap watches",)),
    ("other header", "header", "/^BulkSender/\n", {"header": "X-Mailer"}, {}, ("BulkSender",)),
    ("header absent", "header", "/./\n", {"header": "X-Nothing"}, {}, None),
    ("body regex", "body", "/claim\\s+your\\s+\\w+/\n", {}, {}, ("claim your prize",)),
    ("url host", "url", ".bad-example.test\n", {}, {}, ("www.shop.bad-example.test",)),
    ("attachment name", "attachment", "*.exe\n", {}, {}, ("Invoice.PDF.exe",)),
    ("attachment not listed", "attachment", "*.scr\n", {}, {}, None),
])
def test_every_map_type(tmp_path, label, kind, text, extra, ctx_kw, options):
    check = multimap(tmp_path, [(kind, text, extra)])
    hits = asyncio.run(check.run(context(**ctx_kw)))
    assert hits == ([Hit("MAP_0", options)] if options else []), label


def test_missing_file_is_an_empty_map_until_it_appears(tmp_path, caplog):
    check = multimap(tmp_path, [("ip", "192.0.2.7\n", {})])
    (tmp_path / "map0").unlink()
    assert asyncio.run(check.run(context())) == []
    assert "unusable" in caplog.text


def test_oversized_file_is_refused(tmp_path, caplog):
    check = multimap(tmp_path, [("ip", "192.0.2.7\n" * 100, {})],
                     **{"scan.multimap.max_file_bytes": 64})
    assert asyncio.run(check.run(context())) == []
    assert "max_file_bytes" in caplog.text


# ------------------------------------------------------------------ symbols and the engine

def test_the_engine_learns_map_symbols_from_config(tmp_path):
    cfg = config.load(None, {"scan.multimap.maps": [
        {"type": "ip", "file": str(tmp_path / "a"), "symbol": "LOCAL_BL", "score": 7.5,
         "description": "our block list", "action": "reject"},
        {"type": "sender", "file": str(tmp_path / "b"), "symbol": "LOCAL_WL", "score": -5.0},
    ], "scan.scores": {"LOCAL_WL": -3.0}})
    engine = Engine(cfg.scan, all_checks(cfg))
    bl, wl = engine.symbols["LOCAL_BL"], engine.symbols["LOCAL_WL"]
    assert (bl.score, bl.description, bl.force_action) == (7.5, "our block list", "reject")
    assert (wl.score, wl.force_action) == (-3.0, None)  # scan.scores overrides it too


def test_a_map_symbol_clashing_with_the_table_names_it(tmp_path):
    cfg = config.load(None, {"scan.multimap.maps": [
        {"type": "ip", "file": str(tmp_path / "a"), "symbol": "GTUBE", "score": 1.0}]})
    with pytest.raises(ConfigError) as err:
        Engine(cfg.scan, all_checks(cfg))
    assert "GTUBE" in str(err.value)


def test_a_dnsbl_zone_you_add_carries_its_scores():
    cfg = config.load(None, {"scan.dnsbl.zones": [
        {"zone": "bl.example.test", "returncodes": {"MY_RBL": ["127.0.0.2"]},
         "scores": {"MY_RBL": 3.0}}]})
    engine = Engine(cfg.scan, all_checks(cfg))
    assert engine.symbols["MY_RBL"].score == 3.0


def test_a_dnsbl_zone_symbol_without_a_score_is_refused():
    cfg = config.load(None, {"scan.dnsbl.zones": [
        {"zone": "bl.example.test", "returncodes": {"MY_RBL": ["127.0.0.2"]}}]})
    with pytest.raises(ConfigError, match="MY_RBL"):
        Engine(cfg.scan, all_checks(cfg))


def test_default_symbols_all_scored():
    Engine(config.load(None).scan, all_checks(config.load(None)), load_symbols(config.load(None).scan))


@pytest.mark.parametrize("overrides, key", [
    ({"scan.multimap.maps": [{"type": "dns", "file": "x", "symbol": "A"}]}, "scan.multimap.maps[0].type"),
    ({"scan.multimap.maps": [{"type": "ip", "symbol": "A"}]}, "scan.multimap.maps[0].file"),
    ({"scan.multimap.maps": [{"type": "ip", "file": "x", "symbol": "lower"}]},
     "scan.multimap.maps[0].symbol"),
    ({"scan.multimap.maps": [{"type": "ip", "file": "x", "symbol": "A", "action": "drop"}]},
     "scan.multimap.maps[0].action"),
    ({"scan.multimap.maps": [{"type": "header", "file": "x", "symbol": "A"}]},
     "scan.multimap.maps[0].header"),
    ({"scan.multimap.maps": [{"type": "ip", "file": "x", "symbol": "A"},
                             {"type": "helo", "file": "y", "symbol": "A"}]},
     "scan.multimap.maps[1].symbol"),
    ({"scan.multimap.map_check_interval_s": 0}, "scan.multimap.map_check_interval_s"),
    ({"scan.dnsbl.zones": [{"zone": "nodots", "returncodes": {"A": ["127.0.0.2"]}}]},
     "scan.dnsbl.zones[0].zone"),
    ({"scan.dnsbl.zones": [{"zone": "bl.test", "kind": "url", "returncodes": {"A": ["127.0.0.2"]}}]},
     "scan.dnsbl.zones[0].kind"),
    ({"scan.dnsbl.zones": [{"zone": "bl.test"}]}, "scan.dnsbl.zones[0].returncodes"),
    ({"scan.dnsbl.zones": [{"zone": "bl.test", "returncodes": {"A": ["127.0.0.300"]}}]},
     "scan.dnsbl.zones[0].returncodes.A[0]"),
    ({"scan.dnsbl.zones": [{"zone": "bl.test", "bits": {"A": 256}}]}, "scan.dnsbl.zones[0].bits.A"),
    ({"scan.dnsbl.zones": [{"zone": "bl.test", "bits": {"A": 2}, "scores": {"B": 1.0}}]},
     "scan.dnsbl.zones[0].scores.B"),
    ({"scan.dnsbl.zones": [{"zone": "bl.test", "bits": {"A": 2}},
                           {"zone": "BL.test", "bits": {"B": 2}}]}, "scan.dnsbl.zones[1].zone"),
    ({"scan.dnsbl.profiles": ["sideways"]}, "scan.dnsbl.profiles[0]"),
    ({"scan.dnsbl.exclude_networks": ["10.0.0.0/33"]}, "scan.dnsbl.exclude_networks[0]"),
    ({"scan.dnsbl.max_domains": 0}, "scan.dnsbl.max_domains"),
])
def test_bad_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        config.load(None, overrides)
    assert err.value.key == key


# ------------------------------------------------------------------ DNSBL names

@pytest.mark.parametrize("addr, name", [
    ("192.0.2.1", "1.2.0.192"),
    ("IPv6:2001:db8::1",
     "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"),
    ("::ffff:192.0.2.1", "1.2.0.192"),
])
def test_reversed_names(addr, name):
    assert reversed_name(parse_client_address(addr)) == name


@pytest.mark.parametrize("addr", [None, "", "[UNAVAILABLE]", "unknown"])
def test_no_parse_client_address(addr):
    assert parse_client_address(addr) is None


PSL = """// comment
com
uk
co.uk
*.ck
!www.ck
blogspot.com
рф
"""


@pytest.mark.parametrize("name, registrable", [
    ("www.shop.example.com", "example.com"),
    ("example.com", "example.com"),
    ("a.b.example.co.uk", "example.co.uk"),
    ("co.uk", "co.uk"),
    ("a.b.foo.ck", "b.foo.ck"),
    ("a.www.ck", "www.ck"),
    ("evil.blogspot.com", "evil.blogspot.com"),
    ("x.example.xn--p1ai", "example.xn--p1ai"),
    ("host.unknown-tld", "host.unknown-tld"),
    ("a.b.unknown-tld", "b.unknown-tld"),
])
def test_registrable_domain(name, registrable):
    assert PublicSuffixList.parse(PSL).organizational_domain(name) == registrable


def test_no_public_suffix_list_means_the_last_two_labels(tmp_path, caplog):
    psl = public_suffix_list(str(tmp_path / "missing.dat"))
    assert psl.organizational_domain("a.b.example.co.uk") == "co.uk"
    assert "unusable" in caplog.text
