"""Scoring through real Postfix, with a local DNS server answering the SPF lookups."""

from __future__ import annotations

import email.utils
import re
import smtplib
import time
import urllib.error
import urllib.request
import uuid

import pytest

from tests.support.dns_server import DnsTestServer
from tests.support.net import free_port
from tests.support.postfix import wait_until

pytestmark = pytest.mark.integration

CLIENT_IP = "127.0.0.2"
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


@pytest.fixture(scope="module")
def dns():
    server = DnsTestServer({
        "example.org": [("TXT", f"v=spf1 ip4:{CLIENT_IP} -all")],
        "client.example.org": [("A", CLIENT_IP)],
    })
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def scanning(tmp_path_factory, dns):
    from tests.support.pipeline import Pipeline

    metrics_port = free_port()
    p = Pipeline(tmp_path_factory.mktemp("scan"), scan=True,
                 proxy_extra=f'metrics_listen = "127.0.0.1:{metrics_port}"', extra_config=f"""
greylist_delay_s = 1.0
[dns]
nameserver = "{dns.nameserver}"
timeout_s = 1.0
""")
    p.metrics_port = metrics_port
    p.start()
    yield p
    p.stop()


def send(p, message: bytes, sender="alice@example.org"):
    with smtplib.SMTP("127.0.0.1", p.inbound_port, source_address=(CLIENT_IP, 0), timeout=60) as s:
        s.ehlo("client.example.org")
        return s.sendmail(sender, ["bob@example.net"], message)


def message(body: bytes = b"Hello Bob\r\n", subject="Lunch on Friday", msgid=True, date=None) -> tuple[bytes, str]:
    token = uuid.uuid4().hex
    head = f"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: {subject}\r\n"
    head += f"Date: {date or email.utils.formatdate()}\r\n"
    if msgid:
        head += f"Message-ID: <{token}@example.org>\r\n"
    return head.encode() + b"\r\n" + body + f"token {token}\r\n".encode(), token


def delivered(p, token: str) -> list:
    return [m for m in p.sink.messages() if token.encode() in m.message]


def assert_nothing_queued(p, token: str) -> None:
    time.sleep(1.5)
    assert p.postfix.queue_is_empty() and delivered(p, token) == []


def test_clean_message_gets_result_headers(scanning):
    raw, token = message()
    assert send(scanning, raw) == {}
    (got,) = wait_until(lambda: delivered(scanning, token), 30, "delivery")
    text = got.message.decode()
    assert "X-Spam-Action: no action" in text
    assert "R_SPF_ALLOW(-0.20)" in text
    assert "Authentication-Results: filter.example.test; spf=pass smtp.mailfrom=example.org" in text


def test_gtube_is_rejected_with_550_and_nothing_is_queued(scanning):
    raw, token = message(b"test message\r\n" + GTUBE + b"\r\n")
    with pytest.raises(smtplib.SMTPDataError) as err:
        send(scanning, raw)
    assert err.value.smtp_code == 550 and err.value.smtp_error.startswith(b"5.7.1")
    assert_nothing_queued(scanning, token)
    assert "verdict=reject" in scanning.proxy.log_text() and "GTUBE" in scanning.proxy.log_text()


def test_spammy_message_is_delivered_marked(scanning):
    # No Message-ID (2.5) + capital subject (3.0) + date a day ahead (4.0) - SPF pass (0.2) = 9.3
    raw, token = message(subject="CHEAP WATCHES AND PILLS TODAY", msgid=False,
                         date=email.utils.formatdate(time.time() + 86400))
    assert send(scanning, raw) == {}
    (got,) = wait_until(lambda: delivered(scanning, token), 30, "delivery")
    text = got.message.decode()
    assert "X-Spam: Yes" in text and "X-Spam-Action: add header" in text
    for symbol in ("MISSING_MID", "SUBJ_ALL_CAPS", "DATE_IN_FUTURE"):
        assert symbol in text


def test_greylisted_message_is_deferred_then_accepted_on_retry(scanning):
    # No Message-ID (2.5) + SPF pass (-0.2) + capital subject (3.0) = 5.3: greylist.
    raw, token = message(subject="ONE MORE IMPORTANT NOTICE", msgid=False)
    with pytest.raises(smtplib.SMTPDataError) as err:
        send(scanning, raw)
    assert err.value.smtp_code == 451
    assert_nothing_queued(scanning, token)
    time.sleep(1.0)
    assert send(scanning, raw) == {}
    wait_until(lambda: delivered(scanning, token), 30, "delivery after greylisting")


def test_metrics_count_what_happened(scanning):
    raw, token = message()
    assert send(scanning, raw) == {}
    wait_until(lambda: delivered(scanning, token), 30, "delivery")
    with urllib.request.urlopen(f"http://127.0.0.1:{scanning.metrics_port}/metrics", timeout=10) as r:
        assert r.status == 200
        text = r.read().decode()
    # The earlier tests of this module: a GTUBE reject, greylisting, accepted mail.
    assert re.search(r'^smtpproxy_messages_total\{listener="inbound",verdict="accept"\} [1-9]', text, re.M)
    assert re.search(r'^smtpproxy_messages_total\{listener="inbound",verdict="reject"\} [1-9]', text, re.M)
    assert re.search(r'^smtpproxy_scan_actions_total\{action="greylist"\} [1-9]', text, re.M)
    assert re.search(r'^smtpproxy_scan_symbols_total\{symbol="GTUBE"\} 1$', text, re.M)
    assert re.search(r'^smtpproxy_scan_seconds_count [1-9]', text, re.M)
    assert re.search(r"^smtpproxy_sessions_active \d+$", text, re.M)
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"http://127.0.0.1:{scanning.metrics_port}/other", timeout=10)


def test_dns_server_stopped_means_soft_reject(scanning, dns):
    # Last test of the module: it takes the DNS server away. A sender domain
    # never looked up before, so no cached answer can hide the outage.
    dns.stop()
    raw, token = message()
    with pytest.raises(smtplib.SMTPDataError) as err:
        send(scanning, raw, sender="carol@never-seen.example.com")
    assert err.value.smtp_code == 451 and err.value.smtp_error.startswith(b"4.7.1")
    assert_nothing_queued(scanning, token)
    assert "R_SPF_DNSFAIL" in scanning.proxy.log_text()
