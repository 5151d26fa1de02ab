"""The signing daemon's life: a bad key stops start-up; SIGHUP with a broken key keeps the old one.

    client ─► smtpproxy outbound listener (the real daemon, a subprocess) ─► smtp-sink
"""

from __future__ import annotations

import signal
import smtplib
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dkim
import pytest

from smtpproxy.sign import keys
from tests.support.net import free_port
from tests.support.pipeline import ProxyProcess
from tests.support.postfix import SmtpSink, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def config(base: Path, listen: int, sink: int) -> str:
    return f"""
state_dir = "{base / 'state'}"
[proxy]
hostname = "filter.example.test"
[[proxy.listeners]]
name = "submission"
listen = "127.0.0.1:{listen}"
profile = "outbound"
downstream = "127.0.0.1:{sink}"
[scan]
enabled = false
[sign]
key_table = "{base / 'key_table'}"
signing_table = "{base / 'signing_table'}"
table_check_interval_s = 0.1
"""


@pytest.fixture
def setup(tmp_path):
    key_file = tmp_path / "example.org.s1.key"
    keys.write_private_key(str(key_file), keys.generate_rsa(2048))
    (tmp_path / "key_table").write_text(f"k example.org:s1:{key_file}\n")
    (tmp_path / "signing_table").write_text("example.org k\n")
    return tmp_path, key_file


def send(port: int) -> str:
    token = uuid.uuid4().hex
    raw = (f"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: hi\r\n"
           f"Date: Sat, 21 Nov 2026 03:00:00 +0000\r\n\r\ntoken {token}\r\n").encode()
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("client.example.org")
        s.sendmail("alice@example.org", ["bob@example.net"], raw)
    return token


def test_unreadable_key_stops_start_up_naming_the_key(setup):
    base, key_file = setup
    key_file.unlink()
    (base / "smtpproxy.toml").write_text(config(base, free_port(), free_port()))
    result = subprocess.run([sys.executable, "-m", "smtpproxy.cli", "run", "-c",
                             str(base / "smtpproxy.toml")],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2
    assert "sign.key_table" in result.stderr and "example.org.s1.key" in result.stderr


def test_broken_key_on_reload_keeps_signing_with_the_old_one(setup):
    base, key_file = setup
    record = keys.dns_record(keys.load_key(str(key_file))).encode()
    sink_port, listen = free_port(), free_port()
    sink = SmtpSink(base / "sink", sink_port)
    proxy = ProxyProcess(base / "proxy", config(base, listen, sink_port))
    sink.start()
    proxy.start(listen)
    try:
        def signed(token: str) -> bytes:
            (got,) = wait_until(lambda: [m for m in sink.messages() if token.encode() in m.message],
                                30, "delivery")
            return got.message.replace(b"\n", b"\r\n")

        def verifies(message: bytes) -> bool:
            return dkim.DKIM(message).verify(
                dnsfunc=lambda name, timeout=5: record if name == b"s1._domainkey.example.org." else None)

        assert verifies(signed(send(listen)))
        key_file.write_bytes(b"-----BEGIN PRIVATE KEY-----\ntruncated\n")  # a botched rotation
        proxy.signal(signal.SIGHUP)
        wait_until(lambda: "reload failed" in proxy.log_text(), 20, "the refused reload")
        assert "sign.key_table" in proxy.log_text()
        # Also the periodic file check (due after table_check_interval_s)
        # refuses the broken key; the old key signs on.
        time.sleep(0.3)
        message = signed(send(listen))
        assert verifies(message)
        assert "signing tables not reloaded, the previous ones stay" in proxy.log_text()
    finally:
        proxy.stop()
        sink.stop()
