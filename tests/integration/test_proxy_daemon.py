"""The proxy daemon as an administrator runs it: admission, limits, reload, drain.

A client speaks to the proxy directly here (as Postfix's before-queue smtpd
would), with the real re-injection smtpd of a private Postfix behind it.
"""

from __future__ import annotations

import re
import signal
import smtplib
import socket
import subprocess
import time

import pytest

from tests.support.net import free_port, port_open
from tests.support.postfix import wait_until

pytestmark = pytest.mark.integration


def proxy_client(p, source: str = "127.0.0.1", port: int | None = None) -> smtplib.SMTP:
    smtp = smtplib.SMTP("127.0.0.1", port or p.proxy_port, source_address=(source, 0), timeout=30)
    smtp.ehlo("before-filter.example.test")
    return smtp


def raw_greeting(port: int, source: str = "127.0.0.1") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10,
                                  source_address=(source, 0)) as sock:
        sock.settimeout(10)
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = sock.recv(1024)
            if not chunk:
                break
            data += chunk
        return data


def test_client_outside_client_networks_gets_554(fresh_pipeline):
    p = fresh_pipeline(proxy_extra='client_networks = ["127.0.0.1/32"]')
    assert raw_greeting(p.proxy_port, source="127.0.0.2").startswith(b"554 5.7.1")
    assert raw_greeting(p.proxy_port, source="127.0.0.1").startswith(b"220 filter.example.test")
    assert "refused: not in client_networks" in p.proxy.log_text()


def test_sessions_beyond_cap_get_421(fresh_pipeline):
    p = fresh_pipeline(proxy_extra="max_sessions = 2")
    held: list[smtplib.SMTP] = []

    def hold_one() -> bool:
        # A probe connection closed a moment ago may still count for a few
        # milliseconds, until the proxy has read its EOF.
        try:
            held.append(proxy_client(p))
            return True
        except smtplib.SMTPConnectError:
            return False

    for _ in range(2):
        wait_until(hold_one, 10, "a session slot")
    try:
        assert raw_greeting(p.proxy_port).startswith(b"421 4.3.2")
    finally:
        for smtp in held:
            smtp.quit()
    wait_until(lambda: raw_greeting(p.proxy_port).startswith(b"220"), 10, "a free session slot")


def test_oversized_message_gets_552_and_nothing_is_queued(fresh_pipeline):
    p = fresh_pipeline(proxy_extra="max_message_size_bytes = 2000")
    with proxy_client(p) as smtp:
        code, _ = smtp.mail("big@example.org", ["SIZE=5000"])
        assert code == 552
        code, _ = smtp.mail("big@example.org")
        assert code == 250
        assert smtp.rcpt("rcpt@example.net")[0] == 250
        code, text = smtp.data(b"Subject: big\r\n\r\n" + (b"y" * 70 + b"\r\n") * 50)
        assert code == 552 and text.startswith(b"5.3.4")
        # The session stays usable after the refusal.
        assert smtp.noop()[0] == 250
    time.sleep(1)
    assert p.sink.files() == [] and p.postfix.queue_is_empty()


@pytest.mark.parametrize("arg, code", [
    ("NAME=mail.example.org ADDR=192.0.2.1", 250),
    ("ADDR=IPV6:2001:db8::1 PORT=4711 PROTO=ESMTP HELO=[UNAVAILABLE]", 250),
    ("NAME=a+2Bb.example", 250),
    ("BOGUS=1", 501),
    ("NAME", 501),
    ("NAME=bad+ZZescape", 501),
])
def test_xforward_is_parsed_or_refused(pipeline, arg, code):
    with proxy_client(pipeline) as smtp:
        assert smtp.docmd("XFORWARD", arg)[0] == code


def test_ehlo_advertises_what_postfix_needs(pipeline):
    with proxy_client(pipeline) as smtp:
        for keyword in ("xforward", "size", "8bitmime", "smtputf8", "dsn", "enhancedstatuscodes"):
            assert smtp.has_extn(keyword), keyword
        assert set(smtp.esmtp_features["xforward"].split()) == {
            "NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE"}


def test_rset_abandons_downstream_transaction(pipeline):
    with proxy_client(pipeline) as smtp:
        assert smtp.mail("abandon@example.org")[0] == 250
        assert smtp.rcpt("rcpt@example.net")[0] == 250
        assert smtp.rset()[0] == 250
        # A new transaction on the same session works, and only it is delivered.
        assert smtp.mail("kept@example.org")[0] == 250
        assert smtp.rcpt("rcpt@example.net")[0] == 250
        assert smtp.data(b"Subject: kept\r\nMessage-ID: <kept-after-rset@x>\r\n\r\nbody\r\n")[0] == 250
    wait_until(lambda: any(b"<kept-after-rset@x>" in m.message for m in pipeline.sink.messages()),
               30, "delivery")
    assert not any("<abandon@example.org>" in m.mail_args for m in pipeline.sink.messages())


def test_sighup_reloads_without_dropping_connections(fresh_pipeline):
    p = fresh_pipeline()
    second_port = free_port()
    with proxy_client(p) as held:
        assert held.mail("before-reload@example.org")[0] == 250
        p.proxy.config.write_text(p.proxy.config_text + f"""
[[proxy.listeners]]
name = "outbound"
listen = "127.0.0.1:{second_port}"
profile = "outbound"
downstream = "127.0.0.1:{p.reinject_port}"
""")
        p.proxy.signal(signal.SIGHUP)
        wait_until(lambda: port_open(second_port), 20, "the listener added by reload")
        # The connection that was open across the reload finishes its transaction.
        assert held.rcpt("rcpt@example.net")[0] == 250
        assert held.data(b"Subject: across reload\r\nMessage-ID: <reload@x>\r\n\r\nbody\r\n")[0] == 250
    with proxy_client(p, port=second_port) as smtp:
        assert smtp.noop()[0] == 250
    # An invalid file on the next reload is refused; the daemon keeps serving.
    p.proxy.config.write_text(p.proxy.config_text + "\n[proxy]\nmax_sessions = -1\n")
    p.proxy.signal(signal.SIGHUP)
    wait_until(lambda: "reload refused" in p.proxy.log_text(), 20, "reload refusal")
    assert raw_greeting(p.proxy_port).startswith(b"220")
    wait_until(lambda: any(b"<reload@x>" in m.message for m in p.sink.messages()), 30, "delivery")


def test_sigterm_drains_in_flight_transaction(fresh_pipeline):
    p = fresh_pipeline(proxy_extra="drain_timeout_s = 20")
    smtp = proxy_client(p)
    idle = proxy_client(p)
    assert smtp.mail("drain@example.org")[0] == 250
    assert smtp.rcpt("rcpt@example.net")[0] == 250
    p.proxy.signal(signal.SIGTERM)
    # New clients are no longer served ...
    wait_until(lambda: not port_open(p.proxy_port), 10, "listener closed")
    # ... an idle session is told so ...
    with pytest.raises(smtplib.SMTPServerDisconnected):
        idle.noop()
        idle.noop()
    # ... and the transaction in flight completes.
    assert smtp.data(b"Subject: drained\r\nMessage-ID: <drain@x>\r\n\r\nbody\r\n")[0] == 250
    smtp.close()
    assert p.proxy.proc.wait(30) == 0
    wait_until(lambda: any(b"<drain@x>" in m.message for m in p.sink.messages()), 30, "delivery")


def test_downstream_dying_mid_transaction_tempfails_and_queues_nothing(fresh_pipeline):
    p = fresh_pipeline(proxy_extra="downstream_pool_size = 0")
    with proxy_client(p) as smtp:
        assert smtp.mail("dies@example.org")[0] == 250
        assert smtp.rcpt("rcpt@example.net")[0] == 250
        # Kill the re-injection smtpd that holds our transaction.
        subprocess.run(["pkill", "-9", "-f", f"smtpd -n 127.0.0.1:{p.reinject_port}"], check=False)
        code, text = smtp.data(b"Subject: lost downstream\r\nMessage-ID: <dies@x>\r\n\r\nbody\r\n")
        assert code == 451 and text.startswith(b"4.3.0")
        assert b"downstream" not in text.lower()  # details stay in our log
    assert "failed at end of data" in p.proxy.log_text()
    time.sleep(1)
    assert p.postfix.queue_is_empty()
    assert not any(b"<dies@x>" in m.message for m in p.sink.messages())


def test_downstream_that_never_answers_times_out_to_451(fresh_pipeline):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections (kernel backlog) and never says a word
    try:
        p = fresh_pipeline(listeners_extra=f"""
[[proxy.listeners]]
name = "blackhole"
listen = "127.0.0.1:{free_port()}"
profile = "inbound"
downstream = "127.0.0.1:{silent.getsockname()[1]}"
""", proxy_extra="downstream_connect_timeout_s = 1.0")
        port = int(re.search(r'name = "blackhole"\nlisten = "127.0.0.1:(\d+)"',
                             p.proxy.config_text).group(1))
        with proxy_client(p, port=port) as smtp:
            start = time.monotonic()
            code, text = smtp.mail("timeout@example.org")
            assert code == 451 and text.startswith(b"4.3.0")
            assert time.monotonic() - start < 10
    finally:
        silent.close()


def test_client_stalling_in_data_gets_421_and_nothing_is_queued(fresh_pipeline):
    p = fresh_pipeline(proxy_extra="data_timeout_s = 1.0")
    with socket.create_connection(("127.0.0.1", p.proxy_port), timeout=10) as sock:
        f = sock.makefile("rwb")

        def command(line: bytes) -> bytes:
            f.write(line + b"\r\n")
            f.flush()
            reply = f.readline()
            while reply[3:4] == b"-":
                reply = f.readline()
            return reply

        f.readline()
        assert command(b"EHLO before-filter.example.test").startswith(b"250")
        assert command(b"MAIL FROM:<stall@example.org>").startswith(b"250")
        assert command(b"RCPT TO:<rcpt@example.net>").startswith(b"250")
        assert command(b"DATA").startswith(b"354")
        f.write(b"Subject: half a message\r\n")
        f.flush()
        assert f.readline().startswith(b"421 4.4.2")
    assert "DATA timeout" in p.proxy.log_text()
    time.sleep(1)
    assert p.postfix.queue_is_empty() and p.sink.files() == []
