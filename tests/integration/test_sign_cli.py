"""``smtpproxy dkim check`` against a local DNS server: published, missing, wrong key."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.dns_server import DnsTestServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "smtpproxy.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def test_check_says_which_selectors_publish_the_configured_keys(tmp_path):
    printed = {}
    for selector, kind in (("good", "rsa"), ("ed", "ed25519"), ("missing", "rsa"),
                           ("stale", "rsa"), ("other", "rsa")):
        out = cli("dkim", "keygen", "-d", "example.org", "-s", selector, "--type", kind,
                  "--dir", str(tmp_path))
        assert out.returncode == 0, out.stderr
        printed[selector] = re.findall(r'"([^"]*)"', out.stdout.splitlines()[-1])
    assert len(printed["good"]) == 2 and all(len(s) <= 255 for s in printed["good"])
    table = "".join(f"{s} example.org:{s}:{tmp_path / f'example.org.{s}.key'}\n"
                    for s in ("good", "ed", "missing", "stale"))
    (tmp_path / "keys").write_text(table)
    (tmp_path / "signing").write_text("example.org good\n")
    conf = tmp_path / "smtpproxy.toml"
    conf.write_text(f"[sign]\nkey_table = '{tmp_path / 'keys'}'\n"
                    f"signing_table = '{tmp_path / 'signing'}'\n")
    with DnsTestServer({
        "good._domainkey.example.org": [("TXT", printed["good"])],
        "ed._domainkey.example.org": [("TXT", printed["ed"])],
        # A selector whose record still holds an older key.
        "stale._domainkey.example.org": [("TXT", printed["other"])],
    }) as dns:
        out = cli("dkim", "check", "-c", str(conf), "-d", "example.org", "--dns", dns.nameserver)
    lines = out.stdout.splitlines()
    assert out.returncode == 1, out
    assert any(x.startswith("good._domainkey.example.org: OK") for x in lines)
    assert any(x.startswith("ed._domainkey.example.org: OK") and "ed25519" in x for x in lines)
    assert any(x.startswith("missing._domainkey.example.org: NOT PUBLISHED") for x in lines)
    assert any(x.startswith("stale._domainkey.example.org: MISMATCH") and "a different key" in x
               for x in lines)


def test_keygen_refuses_to_overwrite_a_key(tmp_path):
    assert cli("dkim", "keygen", "-d", "example.org", "-s", "s1", "--type", "ed25519",
               "--dir", str(tmp_path)).returncode == 0
    again = cli("dkim", "keygen", "-d", "example.org", "-s", "s1", "--dir", str(tmp_path))
    assert again.returncode == 1 and "File exists" in again.stderr
    assert (tmp_path / "example.org.s1.key").read_text().strip().endswith("=")
