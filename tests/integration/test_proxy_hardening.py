"""Attacks on and faults of the proxy that a real Postfix behind it makes visible.

- SMTP smuggling: a client hides a second transaction behind a bare-LF
  end-of-data look-alike; the re-injection smtpd (Postfix 3.7, which reads a
  bare LF as a line end for clients in $mynetworks, and here without
  CHUNKING, so the proxy must use DATA) must still see one message.
- XFORWARD values with control characters are refused, so none reaches a
  header or the re-injection listener.
- A reload that fails at any step keeps all of the old configuration.
"""

from __future__ import annotations

import signal
import socket
import time
import urllib.request

import pytest

from tests.support.net import free_port, port_open
from tests.support.pipeline import Pipeline
from tests.support.postfix import wait_until

pytestmark = pytest.mark.integration


class RawClient:
    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rwb")
        self.greeting = self.reply()

    def reply(self) -> bytes:
        lines = b""
        while True:
            line = self.file.readline()
            lines += line
            if not line or line[3:4] != b"-":
                return lines

    def command(self, line: bytes) -> bytes:
        self.file.write(line + b"\r\n")
        self.file.flush()
        return self.reply()

    def send(self, payload: bytes) -> bytes:
        self.file.write(payload)
        self.file.flush()
        return self.reply()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture
def pipeline_without_chunking(tmp_path):
    p = Pipeline(tmp_path / "p")
    # The re-injection listener reads the message after DATA, like a downstream
    # that offers no CHUNKING: every byte the proxy sends is parsed as lines.
    p.postfix.services[p.reinject_service] += "\n  -o smtpd_discard_ehlo_keywords=chunking"
    p.start()
    try:
        yield p
    finally:
        p.stop()


def test_bare_lf_dot_never_ends_data_downstream(pipeline_without_chunking):
    p = pipeline_without_chunking
    client = RawClient(p.proxy_port)
    try:
        assert client.command(b"EHLO before-filter.example.test").startswith(b"250")
        assert client.command(b"MAIL FROM:<sender@example.org>").startswith(b"250")
        assert client.command(b"RCPT TO:<rcpt@example.net>").startswith(b"250")
        assert client.command(b"DATA").startswith(b"354")
        reply = client.send(
            b"Subject: outer\r\nMessage-ID: <d4-outer@example.org>\r\n\r\nhello\n.\n"
            b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<rcpt@example.net>\r\nDATA\r\n"
            b"Subject: smuggled\r\nMessage-ID: <d4-smuggled@example.org>\r\n\r\nsmuggled\r\n"
            b".\r\n")
        assert reply.startswith(b"250 "), reply
        assert client.command(b"QUIT").startswith(b"221")
    finally:
        client.close()
    delivered = p.wait_delivered(1)
    wait_until(p.postfix.queue_is_empty, 30, "an empty queue")
    time.sleep(1)  # a second message, if one was smuggled, is queued by now
    messages = p.sink.messages()
    assert not any("evil@example.org" in m.mail_args for m in messages), (
        "the re-injection listener read a second, unscanned transaction")
    outer = [m for m in delivered if b"<d4-outer@example.org>" in m.message]
    assert len(outer) == 1 and len(messages) == 1
    assert b"MAIL FROM:<evil@example.org>" in outer[0].message, "the smuggled text stays message text"


def test_xforward_crlf_in_helo_gets_501(pipeline_without_chunking):
    p = pipeline_without_chunking
    client = RawClient(p.proxy_port)
    try:
        assert client.command(b"EHLO before-filter.example.test").startswith(b"250")
        refused = client.command(b"XFORWARD HELO=evil+0D+0AX-Injected:+20yes")
        assert client.command(b"XFORWARD NAME=client.example.org ADDR=192.0.2.7").startswith(b"250")
        assert client.command(b"MAIL FROM:<sender@example.org>").startswith(b"250")
        assert client.command(b"RCPT TO:<rcpt@example.net>").startswith(b"250")
        assert client.command(b"DATA").startswith(b"354")
        assert client.send(b"Subject: d5\r\nMessage-ID: <d5@example.org>\r\n\r\nbody\r\n.\r\n"
                           ).startswith(b"250 ")
        client.command(b"QUIT")
    finally:
        client.close()
    assert refused.startswith(b"501 5.5.4 "), refused
    (message,) = [m for m in p.wait_delivered(1) if b"<d5@example.org>" in m.message]
    assert b"X-Injected" not in message.message


# ------------------------------------------------------------------ D12: reload


def _metrics_ok(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return response.status == 200 and b"smtpproxy_sessions_total" in response.read()
    except OSError:
        return False


FAULTS = ["metrics-port-taken", "listener-port-taken", "signing-key-unreadable"]


@pytest.mark.parametrize("fault", FAULTS)
def test_failed_reload_keeps_all_of_the_old_config(tmp_path, fault):
    metrics_port, new_metrics_port, new_listener_port = free_port(), free_port(), free_port()
    p = Pipeline(tmp_path / "p", proxy_extra=f'metrics_listen = "127.0.0.1:{metrics_port}"')
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    p.start()
    try:
        assert _metrics_ok(metrics_port)
        assert RawClient(p.proxy_port).greeting.startswith(b"220 filter.example.test ")
        # The new configuration changes everything a session can see ...
        new = (p.proxy.config_text
               .replace('hostname = "filter.example.test"',
                        'hostname = "new.example.test"\nmax_message_size_bytes = 1234')
               .replace(f'metrics_listen = "127.0.0.1:{metrics_port}"',
                        f'metrics_listen = "127.0.0.1:{new_metrics_port}"')
               .replace('level = "info"', 'level = "debug"'))
        new += f"""
[[proxy.listeners]]
name = "added"
listen = "127.0.0.1:{new_listener_port}"
profile = "outbound"
downstream = "127.0.0.1:{p.reinject_port}"
"""
        # ... and one part of it cannot be had.
        if fault == "metrics-port-taken":
            blocker.bind(("127.0.0.1", new_metrics_port))
            blocker.listen(1)
        elif fault == "listener-port-taken":
            blocker.bind(("127.0.0.1", new_listener_port))
            blocker.listen(1)
        else:
            (tmp_path / "key_table").write_text(f"k example.org:s1:{tmp_path / 'missing.key'}\n")
            (tmp_path / "signing_table").write_text("example.org k\n")
            new += f"""
[sign]
key_table = "{tmp_path / 'key_table'}"
signing_table = "{tmp_path / 'signing_table'}"
"""
        log_before = len(p.proxy.log_text())
        p.proxy.config.write_text(new)
        p.proxy.signal(signal.SIGHUP)
        wait_until(lambda: "reload failed" in p.proxy.log_text()[log_before:]
                   or "configuration reloaded" in p.proxy.log_text()[log_before:], 30, "the reload")
        after = p.proxy.log_text()[log_before:]
        assert "reload failed" in after, after
        # All of the old: listeners, hostname, limits, metrics endpoint, logging.
        client = RawClient(p.proxy_port)
        assert client.greeting.startswith(b"220 filter.example.test "), client.greeting
        ehlo = client.command(b"EHLO before-filter.example.test")
        assert b"250-SIZE 52428800" in ehlo, ehlo
        client.command(b"QUIT")
        client.close()
        assert _metrics_ok(metrics_port), "the old metrics endpoint must stay"
        if fault != "metrics-port-taken":
            assert not port_open(new_metrics_port)
        if fault != "listener-port-taken":
            assert not port_open(new_listener_port)
        assert " DEBUG: " not in p.proxy.log_text()[log_before:], "the new log level was applied"
        # Once the fault is gone, the same file reloads whole.
        blocker.close()
        if fault == "signing-key-unreadable":
            p.proxy.config.write_text(new.split("\n[sign]\n")[0])
        log_before = len(p.proxy.log_text())
        p.proxy.signal(signal.SIGHUP)
        wait_until(lambda: "configuration reloaded" in p.proxy.log_text()[log_before:], 30,
                   "the second reload")
        assert RawClient(p.proxy_port).greeting.startswith(b"220 new.example.test ")
        assert _metrics_ok(new_metrics_port) and not _metrics_ok(metrics_port)
        assert port_open(new_listener_port)
    finally:
        blocker.close()
        p.stop()
