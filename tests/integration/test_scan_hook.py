"""The end-of-data scan hook decides; the proxy applies it against the real re-injection smtpd.

The proxy runs in-process here so the test can plug its own hook in; the
downstream is the private Postfix's real re-injection listener.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import aiosmtplib
import pytest

from smtpproxy.common import config
from smtpproxy.daemon import ProxyService
from smtpproxy.transaction import Transaction, Verdict
from tests.support.net import free_port
from tests.support.postfix import wait_until

pytestmark = pytest.mark.integration


class Hook:
    def __init__(self, verdict: Verdict | None = None, raises: bool = False, sleep_s: float = 0):
        self.verdict = verdict or Verdict()
        self.raises = raises
        self.sleep_s = sleep_s
        self.seen: list[Transaction] = []

    async def scan(self, txn: Transaction) -> Verdict:
        self.seen.append(txn)
        if self.sleep_s:
            await asyncio.sleep(self.sleep_s)
        if self.raises:
            raise RuntimeError("a bug in a check")
        return dataclasses.replace(self.verdict)


def run_transaction(pipeline, hook, message: bytes, scan_timeout_s: float = 5.0):
    """Send one message through an in-process proxy with ``hook``; the client's replies."""
    port = free_port()
    cfg = config.load(None, {
        "proxy.hostname": "filter.example.test",
        "proxy.scan_timeout_s": scan_timeout_s,
        "proxy.listeners": [{"name": "inbound", "listen": f"127.0.0.1:{port}",
                             "downstream": f"127.0.0.1:{pipeline.reinject_port}"}],
    })

    async def main():
        service = ProxyService(cfg, hook)
        await service.start()
        try:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=30,
                                     local_hostname="before-filter.example.test")
            await client.connect()
            await client.ehlo()
            await client.execute_command(b"XFORWARD NAME=mail.example.org ADDR=192.0.2.7 HELO=mail.example.org")
            await client.mail("scan@example.org")
            await client.rcpt("rcpt@example.net")
            try:
                reply = await client.data(message)
            except aiosmtplib.SMTPDataError as exc:
                reply = aiosmtplib.SMTPResponse(exc.code, exc.message)
            await client.quit()
            return reply
        finally:
            await service.stop()

    return asyncio.run(main())


def message(msgid: str, extra: bytes = b"") -> bytes:
    return (f"From: a@example.org\r\nTo: rcpt@example.net\r\nMessage-ID: <{msgid}>\r\n".encode()
            + extra + b"Subject: scan hook\r\n\r\nbody\r\n")


def delivered(pipeline, msgid: str) -> list:
    return [m for m in pipeline.sink.messages() if f"<{msgid}>".encode() in m.message]


def assert_never_delivered(pipeline, msgid: str) -> None:
    time.sleep(1.5)
    assert pipeline.postfix.queue_is_empty()
    assert delivered(pipeline, msgid) == []


def test_reject_verdict_answers_550_and_abandons_downstream(pipeline):
    hook = Hook(Verdict(action="reject", reply="550 5.7.1 Message rejected as spam", summary="score=20"))
    reply = run_transaction(pipeline, hook, message("reject@x"))
    assert (reply.code, reply.message) == (550, "5.7.1 Message rejected as spam")
    assert_never_delivered(pipeline, "reject@x")
    # The hook saw the real client from XFORWARD and the whole message.
    (txn,) = hook.seen
    assert (txn.client.addr, txn.client.helo, txn.client.name) == (
        "192.0.2.7", "mail.example.org", "mail.example.org")
    assert txn.rcpt_tos == ["rcpt@example.net"] and b"<reject@x>" in txn.content


def test_tempfail_verdict_answers_451(pipeline):
    reply = run_transaction(pipeline, Hook(Verdict(action="tempfail")), message("tempfail@x"))
    assert reply.code == 451 and reply.message.startswith("4.7.1")
    assert_never_delivered(pipeline, "tempfail@x")


@pytest.mark.parametrize("hook, timeout", [
    (Hook(raises=True), 5.0),
    (Hook(sleep_s=3.0), 0.5),
], ids=["hook-raises", "hook-too-slow"])
def test_scan_failure_tempfails_without_detail(pipeline, hook, timeout):
    msgid = f"scanfail-{timeout}@x"
    reply = run_transaction(pipeline, hook, message(msgid), scan_timeout_s=timeout)
    assert reply.code == 451 and reply.message.startswith("4.7.1")
    assert "bug" not in reply.message
    assert_never_delivered(pipeline, msgid)


def test_accept_verdict_adds_and_removes_headers(pipeline):
    hook = Hook(Verdict(add_headers=[("X-Spam-Status", "No, score=0.1")],
                        remove_headers=["X-Spam-Status"]))
    reply = run_transaction(pipeline, hook,
                            message("edit@x", extra=b"X-Spam-Status: Yes, forged by the sender\r\n"))
    assert reply.code == 250
    (got,) = wait_until(lambda: delivered(pipeline, "edit@x"), 30, "delivery")
    assert b"X-Spam-Status: No, score=0.1\n" in got.message
    assert b"forged by the sender" not in got.message
