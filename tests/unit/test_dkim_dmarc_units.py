"""Pure parts of DKIM/ARC/DMARC: canonicalisation vectors, the public suffix list,
DMARC record parsing and alignment, Authentication-Results fields, config keys.

- flanker canonicalisation cases (../shared/corpora/dkim/flanker-canonicalization,
  21 cases x simple and relaxed = 42): dkimpy's canonicalisation, which the
  checks verify with, reproduces every expected output byte for byte (input
  with bare LF read as CRLF, as the corpus README says). The ``nofws.expected.*``
  files are DomainKeys (RFC 4870, historic) canonicalisation, which DKIM
  verifiers do not implement: not applicable, not run.
- OpenDMARC vectors (../shared/corpora/dmarc/opendmarc/VECTORS.json): its
  organisational-domain and alignment cases pass; its record-parse cases
  describe OpenDMARC's own leniency and are compared with the RFC 7489 reading,
  the differences listed in RECORD_DIFFERENCES with the reason.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import dkim
import pytest
from dkim.canonicalization import Relaxed, Simple

from smtpproxy.common import config
from smtpproxy.scan.checks.dmarc import NoPolicy, RecordError, author_domains, parse_record
from smtpproxy.scan.psl import PublicSuffixList
from smtpproxy.scan.results import authentication_results

CORPORA = Path(__file__).resolve().parents[3] / "shared" / "corpora"
FLANKER = CORPORA / "dkim" / "flanker-canonicalization"
OPENDMARC = CORPORA / "dmarc" / "opendmarc"
DEBIAN_PSL = Path("/usr/share/publicsuffix/public_suffix_list.dat")


# ---------------------------------------------------------------- canonicalisation

def _flanker_cases():
    if not FLANKER.exists():
        return []
    ids = sorted(p.name.split(".")[1] for p in FLANKER.glob("email.*"))
    return [pytest.param(i, name, algo, id=f"{name}.{i}")
            for i in ids for name, algo in (("simple", Simple), ("relaxed", Relaxed))]


def canonicalise(raw: bytes, algo) -> bytes:
    raw = re.sub(rb"(?<!\r)\n", b"\r\n", raw)
    headers, body = dkim.rfc822_parse(raw)
    out = b"".join(name + b":" + value for name, value in algo.canonicalize_headers(headers))
    return out + b"\r\n" + algo.canonicalize_body(body)


def test_flanker_cases_are_there():
    assert len(_flanker_cases()) == 42


@pytest.mark.parametrize("case, name, algo", _flanker_cases())
def test_flanker_canonicalisation(case, name, algo):
    raw = (FLANKER / f"email.{case}").read_bytes()
    assert canonicalise(raw, algo) == (FLANKER / f"{name}.expected.{case}").read_bytes()


# ---------------------------------------------------------------- public suffix list

TEST_PSL = PublicSuffixList.parse("""// comment
com
uk
co.uk
*.ck
!www.ck
// ===BEGIN PRIVATE DOMAINS===
blogspot.com
公司.cn
""")


@pytest.mark.parametrize("name, suffix, org", [
    ("example.com", "com", "example.com"),
    ("a.b.example.com", "com", "example.com"),
    ("Mail.Example.CO.UK.", "co.uk", "example.co.uk"),
    ("co.uk", "co.uk", "co.uk"),
    ("foo.bar.ck", "bar.ck", "foo.bar.ck"),       # *.ck
    ("a.www.ck", "ck", "www.ck"),                 # !www.ck beats *.ck
    ("x.blogspot.com", "blogspot.com", "x.blogspot.com"),  # private section used
    ("a.unlisted", "unlisted", "a.unlisted"),     # implicit "*"
    ("a.xn--55qx5d.cn", "xn--55qx5d.cn", "a.xn--55qx5d.cn"),  # IDN rule in A-label form
    ("", "", ""),
])
def test_public_suffix_algorithm(name, suffix, org):
    assert TEST_PSL.public_suffix(name) == suffix
    assert TEST_PSL.organizational_domain(name) == org


@pytest.mark.skipif(not DEBIAN_PSL.exists(), reason="Debian package publicsuffix not installed")
@pytest.mark.parametrize("name, org", [
    ("mail.example.com", "example.com"),
    ("www.example.co.uk", "example.co.uk"),
    ("example.gov", "example.gov"),
    ("a.b.example.k12.ca.us", "example.k12.ca.us"),
])
def test_debian_list(name, org):
    assert PublicSuffixList.load(str(DEBIAN_PSL)).organizational_domain(name) == org


def _vectors():
    return json.loads((OPENDMARC / "VECTORS.json").read_text()) if OPENDMARC.exists() else {}


@pytest.mark.parametrize("case", _vectors().get("organizational_domain_with_psl", []),
                         ids=lambda c: c["domain"])
def test_opendmarc_org_domain(case):
    psl = PublicSuffixList.load(str(OPENDMARC / "effective_tld_names.dat"))
    assert psl.organizational_domain(case["domain"]) == case["org_domain"]


@pytest.mark.parametrize("case", _vectors().get("alignment", []),
                         ids=lambda c: f"{c['identifier_domain']}~{c['from_domain']}")
def test_opendmarc_alignment(case):
    from smtpproxy.scan.checks.dmarc import DmarcCheck
    check = DmarcCheck.__new__(DmarcCheck)
    check.psl = PublicSuffixList.load(str(OPENDMARC / "effective_tld_names.dat"))
    mode = "s" if case["mode"] == "strict" else "r"
    assert check._aligned(case["identifier_domain"], case["from_domain"], mode) is case["aligned"]


# ---------------------------------------------------------------- DMARC records

# OpenDMARC's reading -> ours, where they differ, and why.
RECORD_DIFFERENCES = {
    "v=DMARC1; p=n;": ("OKAY", "nopolicy",
                       "OpenDMARC matches p= by prefix; RFC 7489 6.3 names three exact values, "
                       "and 6.6.3 says a record without a valid p= (and no rua=) gets no DMARC processing"),
    "v=DMARC1; p=bob;": ("ERROR_BAD_VALUE", "nopolicy",
                         "RFC 7489 6.6.3: no valid p= and no rua=: no DMARC processing, not an error"),
    "v=DMARC1; p=none; rf=bob;": ("ERROR_BAD_VALUE", "ok",
                                  "rf= only concerns failure reports, which we do not send; "
                                  "RFC 7489 6.3 says to ignore what a receiver does not use"),
    "v=DMARC1; p=none; rf=000000000000000000000000000000000": (
        "ERROR_BAD_VALUE", "ok", "as above: rf= is a reporting tag"),
}


def _classify(record: str) -> str:
    try:
        parse_record(record)
        return "ok"
    except RecordError:
        return "error"
    except NoPolicy:
        return "nopolicy"


@pytest.mark.parametrize("case", _vectors().get("dmarc_record_parse", []), ids=lambda c: c["record"])
def test_opendmarc_record_parse(case):
    record, status = case["record"], case["opendmarc_status"]
    if record in RECORD_DIFFERENCES:
        theirs, ours, _why = RECORD_DIFFERENCES[record]
        assert status == theirs and _classify(record) == ours
        return
    expected = {"OKAY": "ok", "ERROR_NO_REQUIRED_P": "nopolicy"}.get(status, "error")
    assert _classify(record) == expected


@pytest.mark.parametrize("record, tags", [
    ("v=DMARC1; p=Reject; SP=quarantine; pct=20",
     {"v": "DMARC1", "p": "reject", "sp": "quarantine", "pct": "20"}),
    ("v=DMARC1;p=none;np=reject;psd=y;", {"v": "DMARC1", "p": "none", "np": "reject", "psd": "y"}),
    ("v=DMARC1; rua=mailto:a@example.com", {"v": "DMARC1", "p": "none", "rua": "mailto:a@example.com"}),
])
def test_record_tags(record, tags):
    assert parse_record(record) == tags


@pytest.mark.parametrize("record", [
    "p=none; v=DMARC1", "v=DMARC1; p=none; reject", "v=DMARC1; p=none; np=maybe",
    "v=DMARC1; p=none; pct=-1", "v=DMARC1; p=none; psd=yes", "v=DMARC2; p=none",
])
def test_record_errors(record):
    with pytest.raises(RecordError):
        parse_record(record)


@pytest.mark.parametrize("header, domains", [
    ("From: a@Example.COM\r\n", ["example.com"]),
    ("From: \"Doe, John\" <j@example.com>, x@example.org\r\n", ["example.com", "example.org"]),
    ("From: a@example.com\r\nFrom: b@example.net\r\n", ["example.com", "example.net"]),
    ("From: =?UTF-8?Q?a=2C_b?= <a@example.com>\r\n", ["example.com"]),
    ("From: undisclosed\r\n", []),
    ("From: jürgen@bücher.example\r\n", ["xn--bcher-kva.example"]),
    ("Subject: none\r\n", []),
])
def test_author_domains(header, domains):
    assert author_domains(header.encode() + b"\r\nbody\r\n") == domains


# ---------------------------------------------------------------- Authentication-Results

def test_authentication_results_fields():
    value = authentication_results("mx.example.net", {
        "dkim": {"signatures": [{"result": "pass", "domain": "example.com", "selector": "s1",
                                 "algorithm": "ed25519-sha256"}]},
        "dmarc": {"result": "fail", "domain": "example.com", "policy": "reject"},
        "arc": {"result": "pass", "as_domain": "list.example.org", "as_selector": "a",
                "ams_domain": "list.example.org", "ams_selector": "a"},
    })
    assert value == ("mx.example.net; dkim=pass header.d=example.com header.a=ed25519-sha256 "
                     "header.s=s1; dmarc=fail header.from=example.com policy.dmarc=reject; "
                     "arc=pass header.ams-d=list.example.org header.ams-s=a "
                     "header.as-d=list.example.org header.as-s=a")


def test_authentication_results_unsigned_and_no_from():
    value = authentication_results("mx.example.net", {
        "dkim": {"signatures": []}, "dmarc": {"result": "permerror", "domain": "", "policy": ""},
        "arc": {"result": "none", "sealers": []}})
    assert value == "mx.example.net; dkim=none; dmarc=permerror; arc=none"


# ---------------------------------------------------------------- config

@pytest.mark.parametrize("text, key", [
    ("[scan.dkim]\nmin_rsa_key_bits = 512", "scan.dkim.min_rsa_key_bits"),
    ("[scan.dkim]\nmax_signatures = 0", "scan.dkim.max_signatures"),
    ("[scan.dkim]\nbogus = 1", "scan.dkim.bogus"),
    ("[scan.arc]\nmin_rsa_key_bits = 768", "scan.arc.min_rsa_key_bits"),
    ("[scan.dmarc]\npublic_suffix_list = ''", "scan.dmarc.public_suffix_list"),
    ("[scan.dmarc]\ntrusted_arc_sealers = ['lists.example.org', 'bad domain']",
     "scan.dmarc.trusted_arc_sealers[1]"),
    ("[scan.dmarc]\npsd = 'yes'", "scan.dmarc.psd"),
])
def test_bad_keys_are_named(tmp_path, text, key):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(config.ConfigError) as err:
        config.load(str(path))
    assert err.value.key == key


# ---------------------------------------------------------------- SPF look-ahead

def test_spf_look_ahead_names_what_pyspf_asks_next():
    from smtpproxy.scan.checks.spf import look_ahead
    record = [(b"v=spf1 mx a a:www.%{d} a:web.example.org/24 ip4:192.0.2.1 -include:_spf.example.org "
               b"exists:%{i}.x.example exists:e.example.org redirect=r.example.org ~all",)]
    assert look_ahead("example.org", "TXT", record, False) == [
        ("example.org", "MX"), ("example.org", "A"), ("web.example.org", "A"),
        ("_spf.example.org", "TXT"), ("e.example.org", "A"), ("r.example.org", "TXT")]
    assert look_ahead("example.org", "TXT", [(b"v=spf1 a/24 mx/24//64 all",)], True) == [
        ("example.org", "AAAA"), ("example.org", "MX")]
    assert look_ahead("example.org", "MX", [(10, "mx1.example.org"), (20, "mx2.example.org")], False) == [
        ("mx1.example.org", "A"), ("mx2.example.org", "A")]
    # Split strings join; other TXT records are not SPF; two SPF records are pyspf's permerror.
    assert look_ahead("example.org", "TXT", [(b"site-verification=x",), (b"v=spf1 ", b"include:_spf.g.test ~all")],
                      False) == [("_spf.g.test", "TXT")]
    assert look_ahead("example.org", "TXT", [(b"v=spf1 a",), (b"v=spf1 mx",)], False) == []
    assert look_ahead("example.org", "A", ["192.0.2.1"], False) == []
    many = [(b"v=spf1 " + b" ".join(b"include:i%d.example.org" % i for i in range(20)) + b" -all",)]
    assert len(look_ahead("example.org", "TXT", many, False)) == 10
