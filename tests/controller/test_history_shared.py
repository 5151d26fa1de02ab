"""History in a shared Redis: two proxy daemons, one history; a refusal's reference traced.

Proxy A runs behind a real Postfix; proxy B is a second daemon on the same
redis-server (another MX host). A GTUBE message refused by A carries
``(ref XXXXXX)`` in its 550; ``smtpproxy trace`` with B's configuration,
and B's GET /history, find A's rows.
"""

from __future__ import annotations

import json
import re
import smtplib
import subprocess
import sys

import pytest

from tests.support.controller import READ_PASSWORD, controller_config, request
from tests.support.dns_server import DnsTestServer
from tests.support.net import free_port
from tests.support.pipeline import REPO, ProxyProcess
from tests.support.postfix import wait_until

pytestmark = pytest.mark.integration

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


@pytest.fixture(scope="module")
def two_proxies(tmp_path_factory, redis_server):
    from tests.support.pipeline import Pipeline

    dns = DnsTestServer({})
    dns.start()
    base = tmp_path_factory.mktemp("shared")
    shared = f"""
[store]
url = "{redis_server.url}"
key_prefix = "hist-test:"
[dns]
nameserver = "{dns.nameserver}"
timeout_s = 1.0
"""
    a = Pipeline(base / "a", scan=True, extra_config=shared)
    b_port, b_smtp = free_port(), free_port()
    b = ProxyProcess(base / "b", f"""
state_dir = "{base / 'b' / 'state'}"
[proxy]
hostname = "mx2.example.test"
[[proxy.listeners]]
listen = "127.0.0.1:{b_smtp}"
downstream = "127.0.0.1:{a.reinject_port}"
{shared}
{controller_config(b_port)}
""")
    a.start()
    try:
        b.start(b_smtp)
        wait_until(lambda: request(b_port, "GET", "/ping", timeout=2)[0] == 200, 30, "controller B")
        yield a, b, b_port
    finally:
        b.stop()
        a.stop()
        dns.stop()


def _send(port: int, body: bytes, subject: str, msgid: str) -> tuple[int, str]:
    message = (f"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: {subject}\r\n"
               f"Message-ID: <{msgid}>\r\nDate: Thu, 1 Jan 2026 00:00:00 +0000\r\n\r\n").encode() + body
    with smtplib.SMTP("127.0.0.1", port, timeout=60, local_hostname="client.example.org") as s:
        try:
            s.sendmail("alice@example.org", ["bob@example.net"], message)
        except smtplib.SMTPDataError as exc:
            return exc.smtp_code, exc.smtp_error.decode()
    return 250, ""


def _smtpproxy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "smtpproxy.cli", *args], capture_output=True,
                          text=True, timeout=60, cwd=REPO)


def test_a_refusal_reference_is_traced_from_another_host(two_proxies):
    a, b, b_port = two_proxies
    code, text = _send(a.inbound_port, GTUBE + b"\r\n", "a test of the filter", "gtube-1@example.org")
    assert code == 550
    ref = re.search(r"\(ref ([0-9A-Z]{6})\)$", text).group(1)

    def traced():
        out = _smtpproxy("trace", "-c", str(b.config), ref)
        return out.returncode == 0 and out
    out = wait_until(traced, 20, "the row of the reference")
    assert "action:      reject" in out.stdout
    assert "GTUBE" in out.stdout and "The GTUBE test string" in out.stdout  # its description
    assert "subject:     a test of the filter" in out.stdout
    assert "<alice@example.org> -> <bob@example.net>" in out.stdout
    assert f"(ref {ref})" in out.stdout

    status, row = request(b_port, "GET", f"/trace?id={ref}", headers={"Password": READ_PASSWORD})
    assert status == 200 and row["host"] == "filter.example.test" and row["ref"] == ref
    assert row["symbols"]["GTUBE"]["description"]


def test_both_hosts_show_the_same_history_with_queue_ids(two_proxies):
    a, b, b_port = two_proxies
    assert _send(a.inbound_port, b"Lunch on Friday?\r\n", "lunch via A", "lunch-a@example.org")[0] == 250
    assert _send(int(b.config.read_text().split('listen = "127.0.0.1:')[1].split('"')[0]),
                 b"Lunch on Saturday?\r\n", "lunch via B", "lunch-b@example.org")[0] == 250

    def both():
        status, data = request(b_port, "GET", "/history?limit=50", headers={"Password": READ_PASSWORD})
        subjects = {row["subject"]: row for row in data["rows"]}
        return {"lunch via A", "lunch via B"} <= set(subjects) and subjects
    rows = wait_until(both, 20, "both rows")
    assert rows["lunch via A"]["host"] == "filter.example.test"
    assert rows["lunch via B"]["host"] == "mx2.example.test"
    qid = rows["lunch via A"]["qid"]
    assert re.fullmatch(r"[0-9A-Za-z]+", qid)
    # The queue id joins the row to the re-injection listener's log line.
    wait_until(lambda: qid in a.postfix.log_text(), 20, "the queue id in Postfix's log")

    listed = _smtpproxy("history", "-c", str(b.config), "--json", "--from", "alice@example.org")
    assert listed.returncode == 0, listed.stderr
    subjects = [json.loads(line)["subject"] for line in listed.stdout.splitlines()]
    assert "lunch via A" in subjects and "lunch via B" in subjects
    traced = _smtpproxy("trace", "-c", str(b.config), qid)
    assert traced.returncode == 0 and "subject:     lunch via A" in traced.stdout
    by_mid = _smtpproxy("trace", "-c", str(b.config), "<lunch-b@example.org>")
    assert by_mid.returncode == 0 and "host:        mx2.example.test" in by_mid.stdout
