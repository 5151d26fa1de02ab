"""The policy daemon's decisions in the proxy's history rows, through the real daemons.

One redis-server is shared by the real smtpproxy-policy daemon and a proxy
behind a real Postfix. The policy daemon greylists a triplet (client
127.0.0.1, the sender, the recipient) and passes its retry; the message then
sent for that envelope through Postfix gets a history row (GET /history,
``smtpproxy trace``) saying so; a message for a recipient the policy daemon
never saw has no ``policy``. A /checkv2 scan gets a row too.
"""

from __future__ import annotations

import smtplib
import subprocess
import sys
import time

import pytest

from tests.policy.support import PolicyDaemon, rcpt
from tests.support.controller import READ_PASSWORD, controller_config, request
from tests.support.dns_server import DnsTestServer
from tests.support.net import free_port
from tests.support.pipeline import REPO
from tests.support.postfix import wait_until

pytestmark = pytest.mark.integration

SENDER = "alice@example.org"
PREFIX = "polhist-test:"
AUTH = {"Password": READ_PASSWORD}


@pytest.fixture(scope="module")
def daemons(tmp_path_factory, redis_server):
    from tests.support.pipeline import Pipeline

    base = tmp_path_factory.mktemp("polhist")
    dns = DnsTestServer({})
    dns.start()
    port = free_port()
    pipeline = Pipeline(base / "proxy", scan=True, extra_config=f"""
[store]
url = "{redis_server.url}"
key_prefix = "{PREFIX}"
[dns]
nameserver = "{dns.nameserver}"
timeout_s = 1.0
{controller_config(port)}
""")
    policy = PolicyDaemon(base / "policy", redis_server.url, store={"key_prefix": PREFIX},
                          greylist={"delay_s": 1.0})
    policy.start()
    try:
        pipeline.start()
        wait_until(lambda: request(port, "GET", "/ping", timeout=2)[0] == 200, 30, "controller")
        yield policy, pipeline, port
    finally:
        pipeline.stop()
        policy.stop()
        dns.stop()


def _send(port: int, recipient: str, subject: str, msgid: str) -> None:
    message = (f"From: Alice <{SENDER}>\r\nTo: {recipient}\r\nSubject: {subject}\r\n"
               f"Message-ID: <{msgid}>\r\nDate: Thu, 1 Jan 2026 00:00:00 +0000\r\n\r\n"
               "Lunch on Friday?\r\n").encode()
    with smtplib.SMTP("127.0.0.1", port, timeout=60, local_hostname="client.example.org") as s:
        s.sendmail(SENDER, [recipient], message)


def _row(port: int, subject: str) -> dict:
    def found():
        status, data = request(port, "GET", "/history?limit=100", headers=AUTH)
        rows = [r for r in data["rows"] if r["subject"] == subject] if status == 200 else []
        return rows and rows[0]
    return wait_until(found, 20, f"the row of {subject!r}")


def test_a_greylisted_then_passed_triplet_shows_in_the_row(daemons):
    policy, pipeline, port = daemons
    triplet = rcpt(client_address="127.0.0.1", sender=SENDER, recipient="bob@example.net")
    with policy.connect() as client:
        assert client.ask(**triplet).startswith("DEFER_IF_PERMIT")
        time.sleep(1.2)
        assert client.ask(**triplet).startswith("PREPEND X-Greylist")
    time.sleep(0.3)  # the decision is written in the background (a 50 ms batch)

    _send(pipeline.inbound_port, "bob@example.net", "after greylisting", "gl-1@example.org")
    row = _row(port, "after greylisting")
    assert row["ip"] == "127.0.0.1"
    assert row["policy"] == [{"rcpt": "bob@example.net", "greylist": "passed",
                              "delayed_s": row["policy"][0]["delayed_s"]}]
    assert row["policy"][0]["delayed_s"] >= 1

    traced = subprocess.run([sys.executable, "-m", "smtpproxy.cli", "trace", "-c",
                             str(pipeline.proxy.config), "gl-1@example.org"],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert traced.returncode == 0, traced.stderr
    assert "policy:      <bob@example.net> greylist passed, delayed" in traced.stdout


def test_a_message_without_a_policy_decision_has_none(daemons):
    _, pipeline, port = daemons
    _send(pipeline.inbound_port, "carol@example.net", "never asked", "none-1@example.org")
    row = _row(port, "never asked")
    assert row["ip"] == "127.0.0.1" and "policy" not in row


def test_a_checkv2_scan_is_in_the_history(daemons):
    _, _, port = daemons
    message = (b"From: Dave <dave@example.org>\r\nTo: erin@example.net\r\n"
               b"Subject: asked through checkv2\r\nMessage-ID: <ck-1@example.org>\r\n\r\nHello\r\n")
    status, reply = request(port, "POST", "/checkv2", body=message,
                            headers={**AUTH, "IP": "192.0.2.7", "From": "dave@example.org",
                                     "Rcpt": "erin@example.net"})
    assert status == 200, reply
    row = _row(port, "asked through checkv2")
    assert row["listener"] == "controller" and row["verdict"] == "checked"
    assert row["qid"] == "" and row["ip"] == "192.0.2.7"
    assert row["rcpt_smtp"] == ["erin@example.net"] and row["action"] == reply["action"]
