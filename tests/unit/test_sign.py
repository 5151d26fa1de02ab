"""DKIM signing: keys, tables, the signer's decisions, config and configtest.

Signatures made here are checked with dkimpy's verifier (the independent
verifiers, Mail::DKIM and opendkim, run in tests/integration/test_sign_postfix.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path

import dkim
import pytest

from smtpproxy.common import config
from smtpproxy.common.config import ConfigError
from smtpproxy.sign import NoSigner, SignTempfail, keys
from smtpproxy.sign import dkim as dkimsign
from smtpproxy.sign.setup import build_signer, key_warnings
from smtpproxy.sign.tables import TableError, TableSource, load_tables
from smtpproxy.transaction import ClientInfo, Transaction

ROOT = Path(__file__).resolve().parents[2]

_RSA = keys.generate_rsa(2048)
_ED = keys.generate_ed25519()


def message(sender="alice@example.org", extra=b"") -> bytes:
    return (f"From: Alice <{sender}>\r\nTo: bob@example.net\r\nSubject: Lunch\r\n"
            f"Date: Sat, 21 Nov 2026 03:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n").encode() \
        + extra + b"\r\nHello Bob  \r\n\r\n"


@pytest.fixture
def keydir(tmp_path):
    (tmp_path / "rsa.key").write_bytes(_RSA)
    (tmp_path / "ed.key").write_bytes(_ED)
    for name in ("rsa.key", "ed.key"):
        os.chmod(tmp_path / name, 0o640)
    (tmp_path / "keys").write_text(
        f"rsa  example.org:rsa2026:{tmp_path / 'rsa.key'}\n"
        f"ed   example.org:ed2026:{tmp_path / 'ed.key'}   # dual signing\n")
    (tmp_path / "signing").write_text("example.org rsa,ed\n.example.org rsa\n")
    return tmp_path


def records(tmp_path) -> dict[bytes, bytes]:
    out = {}
    for selector, name in (("rsa2026", "rsa.key"), ("ed2026", "ed.key")):
        key = keys.load_key(str(tmp_path / name))
        out[f"{selector}._domainkey.example.org.".encode()] = keys.dns_record(key).encode()
    return out


def verify_all(raw: bytes, recs: dict[bytes, bytes]) -> list[bool]:
    count = len([h for h in dkim.DKIM(raw).headers if h[0].lower() == b"dkim-signature"])
    d = dkim.DKIM(raw)
    return [d.verify(i, dnsfunc=lambda name, timeout=5: recs.get(name)) for i in range(count)]


def make_cfg(keydir, **sign) -> config.Config:
    data = {"key_table": str(keydir / "keys"), "signing_table": str(keydir / "signing"), **sign}
    return config.build(config.Config, {"sign": data})


def txn(content: bytes, profile="outbound", addr="192.0.2.10") -> Transaction:
    return Transaction(session_id="T1", listener=profile, profile=profile,
                       client=ClientInfo(addr=addr), mail_from="alice@example.org",
                       mail_options=[], rcpt_tos=["bob@example.net"], rcpt_options=[[]],
                       content=content)


def sign(cfg, content, **kw) -> bytes:
    return asyncio.run(build_signer(cfg).sign(txn(content, **kw)))


# ------------------------------------------------------------------ keys


def test_generated_keys_round_trip_and_records_match():
    rsa, ed = keys.parse_key(_RSA), keys.parse_key(_ED)
    assert (rsa.key_type, rsa.bits, ed.key_type) == ("rsa", 2048, "ed25519")
    for key in (rsa, ed):
        assert keys.record_matches(key, keys.dns_record(key).encode()) == (True, "")
    assert keys.record_matches(rsa, keys.dns_record(keys.parse_key(keys.generate_rsa(1024))).encode())[0] is False
    assert keys.record_matches(ed, b"v=DKIM1; k=ed25519; p=")[1] == "the key is revoked (empty p=)"
    assert "k=rsa, the key is ed25519" in keys.record_matches(ed, keys.dns_record(rsa).encode())[1]


def test_rsa_public_key_is_what_openssl_derives():
    out = subprocess.run(["openssl", "pkey", "-pubout", "-outform", "DER"], input=_RSA,
                         capture_output=True, check=True).stdout
    assert keys.parse_key(_RSA).public == out


def test_openssl_ed25519_and_pkcs1_rsa_files_load():
    ed = subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519"], capture_output=True,
                        check=True).stdout
    assert keys.parse_key(ed).key_type == "ed25519"
    pkcs1 = subprocess.run(["openssl", "pkey", "-traditional"], input=_RSA, capture_output=True,
                           check=True).stdout
    assert b"BEGIN RSA PRIVATE KEY" in pkcs1 and keys.parse_key(pkcs1).bits == 2048


@pytest.mark.parametrize("data, why", [
    (b"hello", "neither PEM nor a base64 ed25519 key"),
    (b"aGVsbG8=", "a base64 ed25519 key is 32 bytes"),
    (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not an RSA or ed25519"),
])
def test_unusable_key_data_says_why(data, why):
    with pytest.raises(keys.KeyError_, match=why):
        keys.parse_key(data)


def test_rsa_key_under_1024_bits_is_refused():
    small = subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                            "rsa_keygen_bits:512"], capture_output=True, check=True).stdout
    with pytest.raises(keys.KeyError_, match="RFC 8301"):
        keys.parse_key(small)


def test_txt_record_is_split_into_255_octet_strings():
    record = keys.dns_record(keys.parse_key(keys.generate_rsa(4096)))
    parts = keys.txt_strings(record)
    assert len(parts) == 3 and all(len(p) <= 255 for p in parts) and "".join(parts) == record
    assert keys.zone_line("example.org", "s1", keys.parse_key(_ED)).startswith(
        's1._domainkey.example.org. IN TXT ( "v=DKIM1; k=ed25519; p=')


def test_key_file_is_created_0640_and_never_overwritten(tmp_path):
    path = str(tmp_path / "k")
    old = os.umask(0)
    try:
        keys.write_private_key(path, b"x")
    finally:
        os.umask(old)
    assert oct(os.stat(path).st_mode & 0o777) == "0o640"
    with pytest.raises(FileExistsError):
        keys.write_private_key(path, b"y")
    assert keys.loose_permissions(path) is None
    os.chmod(path, 0o644)
    assert "accessible to others" in keys.loose_permissions(path)


# ------------------------------------------------------------------ tables


def test_tables_lookup_exact_and_subdomains(keydir):
    t = load_tables(str(keydir / "keys"), str(keydir / "signing"))
    assert [k.selector for k in t.lookup("example.org")] == ["rsa2026", "ed2026"]
    assert [k.selector for k in t.lookup("Mail.Example.ORG.")] == ["rsa2026"]
    assert t.lookup("example.com") == () and t.lookup("notexample.org") == ()


@pytest.mark.parametrize("key_table, signing_table, which, text", [
    ("rsa example.org:s1", "example.org rsa", "key_table", "keys:1: expected NAME"),
    ("rsa example.org:s1:/nonexistent", "example.org rsa", "key_table", "cannot read /nonexistent"),
    ("rsa example.org:s1:{rsa}", "example.org other", "signing_table", "signing:1: key other is not"),
    ("rsa example.org:s1:{rsa}", "example.com rsa", "signing_table", "does not align with example.com"),
    ("rsa example.org:s1:{rsa}", "* rsa", "signing_table", "not a domain"),
    ("rsa example.org:s1:{rsa}\nrsa example.org:s2:{rsa}", "example.org rsa", "key_table", "defined twice"),
])
def test_bad_table_lines_name_file_and_line(keydir, key_table, signing_table, which, text):
    (keydir / "keys").write_text(key_table.format(rsa=keydir / "rsa.key") + "\n")
    (keydir / "signing").write_text(signing_table + "\n")
    with pytest.raises(TableError) as err:
        load_tables(str(keydir / "keys"), str(keydir / "signing"))
    assert err.value.which == which and text in str(err.value)


def test_tables_reload_on_change_and_bad_reload_keeps_old(keydir, caplog):
    now = [0.0]
    source = TableSource(str(keydir / "keys"), str(keydir / "signing"), 5.0, clock=lambda: now[0])
    (keydir / "signing").write_text("example.org ed\n")
    assert len(source.current().lookup("example.org")) == 2  # not yet due
    now[0] = 6.0
    assert [k.selector for k in source.current().lookup("example.org")] == ["ed2026"]
    # A key file half-written during rotation: the whole reload is refused.
    (keydir / "ed.key").write_bytes(b"garbage")
    now[0] = 12.0
    with caplog.at_level(logging.ERROR, "smtpproxy.sign"):
        assert [k.selector for k in source.current().lookup("example.org")] == ["ed2026"]
    assert "previous ones stay" in caplog.text
    (keydir / "ed.key").write_bytes(_RSA)  # now an RSA key under the same name
    now[0] = 18.0
    assert source.current().lookup("example.org")[0].key.key_type == "rsa"


# ------------------------------------------------------------------ config


@pytest.mark.parametrize("text, key", [
    ("[sign]\nkey_table = '/x'", "sign.signing_table"),
    ("[sign]\non_failure = 'drop'", "sign.on_failure"),
    ("[sign]\nprofiles = ['sideways']", "sign.profiles[0]"),
    ("[sign]\ntrusted_networks = ['10.0.0.0/33']", "sign.trusted_networks[0]"),
    ("[sign]\nheaders = ['to']", "sign.headers"),
    ("[sign]\noversign_headers = ['bad name']", "sign.oversign_headers[0]"),
    ("[sign]\nexpire_s = -1", "sign.expire_s"),
    ("[sign.arc]\nprofiles = ['inbound']\ndomain = 'example.org'", "sign.arc.selector"),
])
def test_bad_sign_values_name_the_key(tmp_path, text, key):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        config.load(str(path))
    assert err.value.key == key


def test_no_tables_means_no_signer():
    assert isinstance(build_signer(config.load(None)), NoSigner)


def test_bad_key_at_start_is_a_config_error_naming_the_key(keydir):
    (keydir / "rsa.key").write_bytes(b"not a key")
    with pytest.raises(ConfigError) as err:
        build_signer(make_cfg(keydir))
    assert err.value.key == "sign.key_table" and "key rsa" in str(err.value)
    cfg = config.build(config.Config, {"sign": {"arc": {
        "profiles": ["inbound"], "domain": "example.org", "selector": "arc",
        "key_file": str(keydir / "ed.key")}}})
    with pytest.raises(ConfigError) as err:
        build_signer(cfg)
    assert err.value.key == "sign.arc.key_file" and "RSA keys only" in str(err.value)


def _configtest(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "smtpproxy.cli", "configtest", "-c", str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_configtest_fails_on_unreadable_key_and_warns_on_loose_mode(keydir):
    conf = keydir / "smtpproxy.toml"
    conf.write_text(f"[scan]\nenabled = false\n[sign]\nkey_table = '{keydir / 'keys'}'\n"
                    f"signing_table = '{keydir / 'signing'}'\n")
    ok = _configtest(conf)
    assert ok.returncode == 0 and "warning" not in ok.stderr
    os.chmod(keydir / "ed.key", 0o644)
    loose = _configtest(conf)
    assert loose.returncode == 0 and "ed.key is accessible to others" in loose.stderr
    assert key_warnings(make_cfg(keydir))
    os.remove(keydir / "rsa.key")
    bad = _configtest(conf)
    assert bad.returncode == 2 and "sign.key_table" in bad.stderr and "rsa.key" in bad.stderr


# ------------------------------------------------------------------ the signer


def test_outbound_mail_gets_rsa_and_ed25519_signatures_that_verify(keydir):
    raw = sign(make_cfg(keydir), message())
    assert raw.endswith(message())
    sigs = [v for n, v in dkim.DKIM(raw).headers if n == b"DKIM-Signature"]
    assert [b"a=rsa-sha256" in s for s in sigs] == [True, False]
    assert all(b"c=relaxed/relaxed" in s and b"d=example.org" in s for s in sigs)
    assert verify_all(raw, records(keydir)) == [True, True]


def test_from_is_oversigned_so_a_second_from_breaks_the_signature(keydir):
    raw = sign(make_cfg(keydir), message())
    tags = dkim.util.parse_tag_value(dkim.DKIM(raw).headers[0][1])
    h = [name.strip() for name in tags[b"h"].split(b":")]  # folded: FWS around the colons
    assert h.count(b"from") == 2 and h.count(b"subject") == 2 and b"reply-to" in h
    head, _, body = raw.partition(b"\r\n\r\n")
    tampered = head + b"\r\nFrom: Mallory <m@example.org>\r\n\r\n" + body
    assert verify_all(tampered, records(keydir)) == [False, False]


def test_expiry_sets_x_after_t(keydir):
    raw = sign(make_cfg(keydir, expire_s=86400), message())
    tags = dkim.util.parse_tag_value(dkim.DKIM(raw).headers[0][1])
    assert int(tags[b"x"]) == int(tags[b"t"]) + 86400
    assert verify_all(raw, records(keydir)) == [True, True]


def test_subdomain_entry_signs_with_parent_domain(keydir):
    raw = sign(make_cfg(keydir), message("alice@lists.example.org"))
    assert verify_all(raw, records(keydir)) == [True]


@pytest.mark.parametrize("content, kw", [
    (message("eve@example.com"), {}),                      # From is not ours
    (message(), {"profile": "inbound"}),                    # not a signing profile
    (message().replace(b"From: Alice <alice@example.org>",
                       b"From: a@example.org, e@example.com"), {}),  # one From domain is not ours
    (b"From: a@example.org\r\nFrom: b@example.org\r\n\r\nx\r\n", {}),  # two From fields
    (b"To: b@example.net\r\n\r\nno From\r\n", {}),
])
def test_mail_that_is_not_ours_to_sign_passes_unchanged(keydir, content, kw):
    assert sign(make_cfg(keydir), content, **kw) == content


def test_trusted_network_is_signed_on_any_listener(keydir):
    cfg = make_cfg(keydir, trusted_networks=["192.0.2.0/24"])
    assert sign(cfg, message(), profile="inbound") != message()
    assert sign(cfg, message(), profile="inbound", addr="198.51.100.1") == message()
    cfg6 = make_cfg(keydir, trusted_networks=["2001:db8::/32"])
    assert sign(cfg6, message(), profile="inbound", addr="IPV6:2001:db8::25") != message()
    assert sign(cfg6, message(), profile="inbound", addr="unknown") == message()


def test_no_second_signature_for_the_same_domain_and_selector(keydir):
    cfg = make_cfg(keydir)
    once = sign(cfg, message())
    assert sign(cfg, once) == once
    # Only the ed25519 key has not signed yet: it alone is added.
    (keydir / "signing").write_text("example.org rsa\n")
    rsa_only = sign(make_cfg(keydir), message())
    (keydir / "signing").write_text("example.org rsa,ed\n")
    both = sign(make_cfg(keydir), rsa_only)
    assert both.count(b"DKIM-Signature:") == 2 and both.startswith(b"DKIM-Signature: v=1; a=ed25519")


def _broken_signer(keydir, **kw):
    signer = build_signer(make_cfg(keydir, **kw))

    def boom(*_args, **_kw):
        raise RuntimeError("the key went away")
    return signer, boom


def test_signing_failure_passes_unsigned_with_an_error_log(keydir, caplog, monkeypatch):
    signer, boom = _broken_signer(keydir)
    monkeypatch.setattr(dkimsign, "sign_message", boom)
    with caplog.at_level(logging.ERROR, "smtpproxy.sign"):
        assert asyncio.run(signer.sign(txn(message()))) == message()
    assert "T1: passed unsigned" in caplog.text and "the key went away" in caplog.text


def test_signing_failure_tempfails_when_configured(keydir, monkeypatch):
    signer, boom = _broken_signer(keydir, on_failure="tempfail")
    monkeypatch.setattr(dkimsign, "sign_message", boom)
    with pytest.raises(SignTempfail, match="the key went away"):
        asyncio.run(signer.sign(txn(message())))


def test_small_messages_are_signed_on_the_loop_big_ones_in_the_pool(keydir, monkeypatch):
    import threading

    from smtpproxy.sign.signer import INLINE_SIGN_MAX_BYTES

    seen = []
    real = dkimsign.sign_message

    def spy(*args, **kw):
        seen.append(threading.current_thread().name)
        return real(*args, **kw)
    monkeypatch.setattr(dkimsign, "sign_message", spy)
    recs = records(keydir)
    small = sign(make_cfg(keydir), message())
    big_body = b"0123456789 " * (INLINE_SIGN_MAX_BYTES // 11) + b"\r\n"
    big = sign(make_cfg(keydir), message() + big_body)
    assert seen[0] == threading.current_thread().name
    assert seen[1].startswith("sign")
    assert verify_all(small, recs) == [True, True] and verify_all(big, recs) == [True, True]


# ------------------------------------------------------------------ ARC helpers


def test_arc_result_replaces_ours_with_what_we_verified_and_keeps_others():
    from smtpproxy.sign.arc import with_arc_result

    raw = (b"Authentication-Results: other.example; spf=pass smtp.mailfrom=a.example\r\n"
           b"Authentication-Results: mx.example.org;\r\n\tdkim=pass (good; 2048-bit) header.d=a.example;"
           b"\r\n\tarc=fail (stale)\r\nFrom: a@a.example\r\n\r\nbody\r\n")
    verified = "mx.example.org;\r\n\tdkim=pass (good; 2048-bit) header.d=a.example;\r\n\tarc=fail (stale)"
    out = with_arc_result(raw, "mx.example.org", "pass", verified)
    assert out.startswith(b"Authentication-Results: mx.example.org;\r\n\tdkim=pass (good; 2048-bit) header.d=a.example;"
                          b"\r\n\tarc=pass\r\n")
    assert b"Authentication-Results: other.example; spf=pass" in out and b"arc=fail" not in out
    # Without the scan's results (scanning off) nothing of the incoming field is kept.
    assert with_arc_result(raw, "mx.example.org", "pass").startswith(
        b"Authentication-Results: mx.example.org;\r\n\tarc=pass\r\nAuthentication-Results: other.example;")
    assert out.endswith(b"From: a@a.example\r\n\r\nbody\r\n")


def test_arc_results_split_outside_comments_and_quotes():
    from smtpproxy.sign.arc import _parts

    assert _parts(b' x.example; dkim=pass (a; b) header.b="c;d";\r\n  spf=none') == [
        b"x.example", b'dkim=pass (a; b) header.b="c;d"', b"spf=none"]


def test_openssl_and_pure_python_rsa_make_the_same_signature():
    # RSASSA-PKCS1-v1_5 is deterministic: the OpenSSL path (cryptography) and
    # dkimpy's arithmetic, the fallback without it, must agree bit for bit.
    import dataclasses
    import hashlib

    key = keys.parse_key(_RSA)
    h = hashlib.sha256(b"message")
    slow = dataclasses.replace(key, fast=None)
    assert slow.sign(h) == (key.sign(h) if key.fast is not None else slow.sign(h))
    assert len(slow.sign(h)) == 256


# ------------------------------------------------------------------ ARC sealing in the signer


class FakeResolver:
    """Answers TXT lookups from a dict; None values mean a DNS timeout."""

    timeout_s = 1.0

    def __init__(self, records: dict[str, bytes | None]):
        self.records = records

    async def txt(self, name: str) -> list[bytes]:
        from smtpproxy.common.dns import DnsTempError

        if name in self.records and self.records[name] is None:
            raise DnsTempError(name, "TXT", "timeout")
        return [self.records[name]] if name in self.records else []


def _sealed_upstream(keydir) -> bytes:
    """A message already sealed once by up.example (instance 1, cv=none)."""
    from smtpproxy.sign.arc import seal_set

    raw = b"Authentication-Results: up.example; spf=pass smtp.mailfrom=example.net\r\n" + message()
    return b"".join(seal_set(raw, "up.example", "arc", keys.load_key(str(keydir / "rsa.key")),
                             "up.example", ["from", "to", "subject", "date"])) + raw


def _arc_signer(keydir, resolver, **sign):
    cfg = config.build(config.Config, {"proxy": {"hostname": "mx.example.org"}, "sign": {
        **sign, "arc": {"profiles": ["inbound"], "domain": "example.org", "selector": "rsa2026",
                        "key_file": str(keydir / "rsa.key")}}})
    return build_signer(cfg, resolver=resolver)


def test_inbound_mail_gets_the_next_arc_set_with_the_verified_cv(keydir):
    record = keys.dns_record(keys.load_key(str(keydir / "rsa.key"))).encode()
    resolver = FakeResolver({"arc._domainkey.up.example": record,
                             "rsa2026._domainkey.example.org": record})
    upstream = _sealed_upstream(keydir)
    out = asyncio.run(_arc_signer(keydir, resolver).sign(txn(upstream, profile="inbound")))
    assert out.startswith(b"ARC-Seal: i=2; cv=pass; a=rsa-sha256; d=example.org; s=rsa2026;")
    assert b"ARC-Authentication-Results: i=2; mx.example.org;\r\n arc=pass\r\n" in out
    assert b"Authentication-Results: mx.example.org;\r\n\tarc=pass\r\n" in out
    cv, _results, reason = dkim.arc_verify(
        out, dnsfunc=lambda name, timeout=5: {b"arc._domainkey.up.example.": record,
                                              b"rsa2026._domainkey.example.org.": record}.get(name))
    assert cv == dkim.CV_Pass, reason


def test_chain_not_verifiable_for_dns_trouble_follows_on_failure(keydir, caplog):
    resolver = FakeResolver({"arc._domainkey.up.example": None})
    upstream = _sealed_upstream(keydir)
    with caplog.at_level(logging.ERROR, "smtpproxy.sign"):
        out = asyncio.run(_arc_signer(keydir, resolver).sign(txn(upstream, profile="inbound")))
    assert out == upstream and "ARC chain not verified" in caplog.text
    with pytest.raises(SignTempfail, match="arc._domainkey.up.example"):
        asyncio.run(_arc_signer(keydir, resolver, on_failure="tempfail").sign(
            txn(upstream, profile="inbound")))


def test_envelope_sender_domain_adds_its_own_signature_only_when_from_is_ours(keydir):
    bounce = keydir / "bounce.key"
    bounce.write_bytes(_RSA)
    with open(keydir / "keys", "a") as f:
        f.write(f"b bounces.example:b1:{bounce}\n")
    with open(keydir / "signing", "a") as f:
        f.write("bounces.example b\n")
    cfg = make_cfg(keydir, envelope_sender=True)

    def signer_for(content, sender):
        t = txn(content)
        t.mail_from = sender
        return asyncio.run(build_signer(cfg).sign(t))

    out = signer_for(message(), "bounce-123@bounces.example")
    assert out.count(b"DKIM-Signature:") == 3 and b"d=bounces.example" in out
    # From not ours: nothing, whatever the envelope sender.
    foreign = message("eve@example.com")
    assert signer_for(foreign, "bounce-123@bounces.example") == foreign
    # Off by default.
    assert sign(make_cfg(keydir), message()).count(b"DKIM-Signature:") == 2
