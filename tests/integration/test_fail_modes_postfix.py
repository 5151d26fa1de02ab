"""Rows of docs/operations.md's fail-mode table that no other test showed:
a dependency of the scan that is down or silent, through a private Postfix.

- DNS server not answering at all (a black hole, not a refusal): the
  message is still answered within the scan budget, with *_DNSFAIL symbols
  and what scan.dns_failure_action says (451 4.7.1, or accepted);
- the store (Redis) down, from the start, while scanning: the daemon starts
  anyway, the scan goes on without it (BAYES_UNAVAILABLE, no greylisting),
  the message is accepted and its history row is lost and logged.
"""

from __future__ import annotations

import email.utils
import smtplib
import socket
import time
import uuid

import pytest

from tests.support.net import free_port
from tests.support.pipeline import Pipeline
from tests.support.postfix import wait_until

pytestmark = pytest.mark.integration

CLIENT_IP = "127.0.0.2"
CHECK_TIMEOUT_S = 3.0
BUDGET_S = 5.0


def message() -> tuple[bytes, str]:
    token = uuid.uuid4().hex
    return (f"From: Alice <alice@sender.example>\r\nTo: bob@example.net\r\n"
            f"Subject: Lunch on Friday\r\nDate: {email.utils.formatdate()}\r\n"
            f"Message-ID: <{token}@sender.example>\r\n\r\nHello Bob\r\ntoken {token}\r\n"
            ).encode(), token


def send(p, raw: bytes) -> tuple[int, bytes]:
    """The reply to end-of-data (or the first refusal) through the front door."""
    with smtplib.SMTP("127.0.0.1", p.inbound_port, source_address=(CLIENT_IP, 0), timeout=120) as s:
        s.ehlo("client.sender.example")
        s.mail("alice@sender.example")
        code, text = s.rcpt("bob@example.net")
        if code != 250:
            return code, text
        return s.data(raw)


def delivered(p, token: str) -> list:
    return [m for m in p.sink.messages() if token.encode() in m.message]


@pytest.fixture
def black_hole():
    """A nameserver that reads every query and never answers (UDP; TCP refused)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.mark.parametrize("action", ["soft reject", "ignore"])
def test_dns_server_not_answering_is_answered_within_the_scan_budget(tmp_path, black_hole, action):
    p = Pipeline(tmp_path / "p", scan=True, extra_config=f"""
check_timeout_s = {CHECK_TIMEOUT_S}
budget_s = {BUDGET_S}
dns_failure_action = "{action}"
[dns]
nameserver = "{black_hole}"
timeout_s = 1.0
""")
    p.start()
    try:
        raw, token = message()
        started = time.monotonic()
        code, text = send(p, raw)
        elapsed = time.monotonic() - started
        # Postfix's own smtpd_proxy_timeout (100 s) is never what ends it.
        assert elapsed < BUDGET_S + 3, elapsed
        log = p.proxy.log_text()
        assert "R_SPF_DNSFAIL" in log
        if action == "soft reject":
            assert code == 451 and text.startswith(b"4.7.1"), (code, text)
            time.sleep(1.5)
            assert p.postfix.queue_is_empty() and delivered(p, token) == []
        else:
            assert code == 250, (code, text)
            wait_until(lambda: delivered(p, token), 30, "delivery")
            assert b"R_SPF_DNSFAIL" in delivered(p, token)[0].message
    finally:
        p.stop()


def test_store_down_while_scanning_accepts_without_it(tmp_path):
    dead_redis = free_port()  # nothing listens there
    p = Pipeline(tmp_path / "p", scan=True, extra_config=f"""
[dns]
nameserver = "127.0.0.1:{free_port()}"
timeout_s = 1.0
[store]
url = "redis://127.0.0.1:{dead_redis}/0"
timeout_s = 0.5
""")
    # DNS refused outright here would soft-reject; only the store is at issue.
    p.proxy.config_text = p.proxy.config_text.replace(
        "[scan]\nenabled = true", '[scan]\nenabled = true\ndns_failure_action = "ignore"')
    p.start()
    try:
        raw, token = message()
        started = time.monotonic()
        code, text = send(p, raw)
        assert code == 250, (code, text)
        assert time.monotonic() - started < BUDGET_S + 3
        wait_until(lambda: delivered(p, token), 30, "delivery")
        log = p.proxy.log_text()
        assert "store not available at start" in log and "bayes: store unusable" in log
        # The message's history row is lost and logged, never waited for.
        wait_until(lambda: "history: 1 rows lost" in p.proxy.log_text(), 10, "the history warning")
    finally:
        p.stop()
