"""The canary through a private Postfix: it passes the filter (scanned and
ARC-sealed, never delivered), a forged one is an ordinary message, and with
the front smtpd's smtpd_proxy_filter gone it is reported missing."""

from __future__ import annotations

import re
import secrets
import smtplib
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.support.dns_server import DnsTestServer
from tests.support.net import free_port
from tests.support.pipeline import REPO, Pipeline
from tests.support.postfix import wait_until

pytestmark = pytest.mark.integration

RECIPIENT = "canary@example.net"
# Long enough that a loaded machine (CI runs the whole suite on 2 cores) still
# sees a canary pass within it while the filter is in the path.
ALERT_AFTER_S = 15.0


def metrics(p) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{p.metrics_port}/metrics", timeout=10) as r:
        return r.read().decode()


def gauge(p, name: str) -> float | None:
    m = re.search(rf"^{name} (\S+)$", metrics(p), re.M)
    return float(m.group(1)) if m else None


def canary_once(p) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "smtpproxy.cli", "canary", "--once",
                           "-c", str(p.proxy.config)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def canaries_at_sink(p) -> list:
    return [m for m in p.sink.messages() if b"X-Smtpproxy-Canary:" in m.message]


@pytest.fixture
def canary(tmp_path):
    dns = DnsTestServer({}).start()
    key = tmp_path / "canary.key"
    key.write_text(secrets.token_urlsafe(32) + "\n")
    key.chmod(0o600)
    arc_dir = tmp_path / "keys"
    arc_dir.mkdir()
    subprocess.run([sys.executable, "-m", "smtpproxy.cli", "dkim", "keygen", "-d", "filter.example",
                    "-s", "arc1", "--type", "rsa", "--dir", str(arc_dir)],
                   capture_output=True, cwd=REPO, timeout=120, check=True)
    metrics_port = free_port()
    p = Pipeline(tmp_path / "p", scan=True,
                 proxy_extra=f'metrics_listen = "127.0.0.1:{metrics_port}"', extra_config=f"""
[sign.arc]
profiles = ["inbound"]
domain = "filter.example"
selector = "arc1"
key_file = "{arc_dir / 'filter.example.arc1.key'}"
[dns]
nameserver = "{dns.nameserver}"
timeout_s = 1.0
""")
    p.metrics_port = metrics_port
    p.proxy.config_text += f"""
[canary]
enabled = true
interval_s = 1.0
alert_after_s = {ALERT_AFTER_S}
target = "127.0.0.1:{p.inbound_port}"
recipient = "{RECIPIENT}"
sender = "monitor@example.org"
secret_file = "{key}"
timeout_s = 20.0
"""
    p.start()
    try:
        yield p
    finally:
        p.stop()
        dns.stop()


def test_canary_passes_and_is_missing_when_the_filter_is_bypassed(canary):
    p = canary
    # The daemon's own canaries pass: scanned, sealed, answered by the proxy.
    wait_until(lambda: (gauge(p, "smtpproxy_canary_last_pass_timestamp_seconds") or 0) > 0,
               30, "a canary through the filter")
    assert gauge(p, "smtpproxy_canary_ok") == 1
    assert re.search(r"canary n=[0-9a-f]+ passed: scanned \(.*\), signed; not delivered",
                     p.proxy.log_text())
    result = canary_once(p)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("CANARY OK - passed the filter")
    assert len(result.stdout.strip().splitlines()) == 1
    # None of them was delivered, nor queued.
    time.sleep(1.5)
    assert canaries_at_sink(p) == [] and p.postfix.queue_is_empty()

    # A canary header without our key is an ordinary message: relayed and delivered.
    forged = (b"From: <monitor@example.org>\r\nTo: <canary@example.net>\r\nSubject: forged\r\n"
              b"X-Smtpproxy-Canary: t=%d; n=0123456789abcdef01234567; mac=%s\r\n\r\nforged\r\n"
              % (int(time.time()), b"ab" * 32))
    with smtplib.SMTP("127.0.0.1", p.inbound_port, timeout=60) as smtp:
        smtp.ehlo("client.example.org")
        smtp.mail("monitor@example.org")
        smtp.rcpt(RECIPIENT)
        code, text = smtp.data(forged)
    assert code == 250 and b"smtpproxy canary" not in text
    wait_until(lambda: any(b"Subject: forged" in m.message for m in canaries_at_sink(p)),
               30, "the forged canary at the sink")
    assert "not a valid canary token: an ordinary message" in p.proxy.log_text()

    # The front smtpd without smtpd_proxy_filter: the canary goes around the filter.
    front = p.postfix.services[0]
    assert "smtpd_proxy_filter" in front
    p.postfix.services[0] = "\n".join(line for line in front.split("\n")
                                      if "smtpd_proxy_filter" not in line)
    p.postfix.reload()
    wait_until(lambda: gauge(p, "smtpproxy_canary_ok") == 0, ALERT_AFTER_S + 30,
               "smtpproxy_canary_ok 0")
    # The error is logged by the canary's next tick (within a second or two).
    wait_until(lambda: f"no canary passed the filter for {ALERT_AFTER_S:.0f}s" in p.proxy.log_text(), 10,
               "the missing canary's error")
    log = p.proxy.log_text()
    assert "accepted the canary without the filter" in log
    result = canary_once(p)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout.startswith("CANARY CRITICAL - ")
    assert "without the filter" in result.stdout
