"""The other side of the internet, for soak runs: a sending MTA and misbehaving clients.

- ``SendingPostfix``: a private Postfix that plays the senders of the world.
  Messages are handed to its own smtpd (``inject``); it queues them and
  delivers them through its relayhost (the front smtpd under test), and on a
  4xx it keeps the message and retries, as real MTAs do, only much sooner
  (backoff of seconds, not minutes). Queue lifetimes are long, so nothing
  bounces during a run: a bounce is a failure of the system under test.
  No DNS: the relayhost is a bracketed address.
- ``PausableDns``: the test DNS server with a switch that makes it stop
  answering (clients time out), as a resolver that went away.
- ``cut_in_data`` and ``cut_after_mail``: clients that go away in the middle
  of a transaction, through the front smtpd or (as a front smtpd that died)
  straight at the proxy.
- ``maillog_time``: the time of a Postfix log line, to put log events next to
  the moments faults were injected.

Every wait is bounded; every process started here is stopped by its owner
(``SendingPostfix.stop``).
"""

from __future__ import annotations

import re
import smtplib
import socket
import struct
import subprocess
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from tests.support.dns_server import DnsTestServer
from tests.support.net import free_port, port_open
from tests.support.postfix import PostfixInstance, wait_until

SENDER_HOSTNAME = "sender.example.org"


class SendingPostfix:
    """A Postfix instance that relays everything it gets to ``relay_port`` and retries on 4xx."""

    def __init__(self, base: Path, relay_port: int, concurrency: int, backoff_s: int = 2):
        self.inject_port = free_port()
        self.postfix = PostfixInstance(
            Path(base),
            relay_port=relay_port,
            # Not the front's name: Postfix refuses to deliver to a greeting
            # naming itself ("mail loops back to myself").
            myhostname=SENDER_HOSTNAME,
            mydomain="example.org",
            myorigin="example.org",
            syslog_name="pfsender",
            enable_long_queue_ids="yes",
            # Retry soon; a real sender waits minutes, the contract is the same.
            minimal_backoff_time=f"{backoff_s}s",
            maximal_backoff_time=f"{2 * backoff_s}s",
            queue_run_delay=f"{backoff_s}s",
            # Nothing may bounce for age during a run.
            bounce_queue_lifetime="1d",
            maximal_queue_lifetime="1d",
            delay_warning_time="0h",
            default_destination_concurrency_limit=str(concurrency),
            smtp_destination_concurrency_limit=str(concurrency),
            initial_destination_concurrency=str(concurrency),
            default_destination_recipient_limit="50",
            smtp_dns_support_level="disabled",
            smtp_host_lookup="native",
            smtp_helo_name=SENDER_HOSTNAME,
        )
        # The injection port: mail from loopback is relayed (mynetworks).
        self.postfix.add_service(f"127.0.0.1:{self.inject_port}", {
            "smtpd_client_connection_count_limit": "0",
        })

    def start(self) -> None:
        self.postfix.start()
        wait_until(lambda: port_open(self.inject_port), 20, "the sender's smtpd")

    def stop(self) -> None:
        self.postfix.stop()

    def inject(self, messages: Iterable[tuple[str, str, bytes]], rate: float = 0.0) -> int:
        """Hand (sender, recipient, message) over to the sender's queue over one SMTP
        session; at most ``rate`` messages a second (0: as fast as it takes them)."""
        count = 0
        start = time.monotonic()
        smtp = smtplib.SMTP("127.0.0.1", self.inject_port, timeout=60,
                            local_hostname="injector.example.org")
        try:
            for mail_from, rcpt, raw in messages:
                if rate > 0:
                    delay = start + count / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                refused = smtp.sendmail(mail_from, [rcpt], raw)
                if refused:
                    raise RuntimeError(f"the sender's smtpd refused {rcpt}: {refused}")
                count += 1
        finally:
            try:
                smtp.quit()
            except smtplib.SMTPException:
                smtp.close()
        return count

    def postqueue(self, *args: str) -> str:
        return subprocess.run(["postqueue", "-c", str(self.postfix.conf), *args],
                              capture_output=True, text=True, timeout=60).stdout

    def queued(self) -> int:
        """Messages in the sender's queue (``postqueue -j``: one JSON object a line)."""
        return sum(1 for line in self.postqueue("-j").splitlines() if line.strip())

    def flush(self) -> None:
        self.postqueue("-f")

    def wait_drained(self, timeout: float, flush_every_s: float = 5.0) -> bool:
        """Flush now and then until the queue is empty; False after ``timeout``."""
        deadline = time.monotonic() + timeout
        next_flush = 0.0
        while time.monotonic() < deadline:
            if self.queued() == 0 and self.postfix.queue_is_empty():
                return True
            if time.monotonic() >= next_flush:
                self.flush()
                next_flush = time.monotonic() + flush_every_s
            time.sleep(0.5)
        return False


class PausableDns(DnsTestServer):
    """The test DNS server; while ``paused`` it answers nothing (clients time out)."""

    paused = False

    def answer(self, wire, transport):
        if self.paused:
            return None
        return super().answer(wire, transport)


def _abort(sock: socket.socket) -> None:
    """Close with RST, as a process that died or a cut cable does (no FIN, no QUIT)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _reply(f) -> str:
    """One whole (possibly multi-line) SMTP reply."""
    lines = []
    while True:
        line = f.readline(2048).decode("latin-1")
        if not line:
            raise ConnectionError("connection closed")
        lines.append(line.rstrip("\r\n"))
        if len(line) < 4 or line[3] != "-":
            return "\n".join(lines)


def cut_in_data(port: int, mail_from: str, rcpt: str, head: bytes, timeout: float = 30) -> str:
    """Start a transaction, send ``head`` (part of a message) after 354, then reset the
    connection. Returns how far it got ("data" when the cut came in DATA)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    f = sock.makefile("rb")
    stage = "greeting"
    try:
        _reply(f)
        for stage, line, want in (("ehlo", b"EHLO cutter.example.org", "250"),
                                  ("mail", f"MAIL FROM:<{mail_from}>".encode(), "250"),
                                  ("rcpt", f"RCPT TO:<{rcpt}>".encode(), "250"),
                                  ("data", b"DATA", "354")):
            sock.sendall(line + b"\r\n")
            if not _reply(f).startswith(want):
                return f"refused at {stage}"
        sock.sendall(head)
        # Let the front pass some of it on before the line goes dead.
        time.sleep(0.2)
        return "data"
    except (OSError, ConnectionError):
        return f"lost at {stage}"
    finally:
        f.close()
        _abort(sock)


def cut_after_mail(port: int, mail_from: str, timeout: float = 30) -> str:
    """Talk to the proxy as a front smtpd would (EHLO, XFORWARD), send MAIL and reset
    the connection at once: the proxy is then waiting for the downstream's reply."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    f = sock.makefile("rb")
    try:
        _reply(f)
        sock.sendall(b"EHLO mx.example.test\r\n")
        _reply(f)
        sock.sendall(b"XFORWARD NAME=cutter.example.org ADDR=127.0.0.1 PROTO=ESMTP"
                     b" HELO=cutter.example.org\r\n")
        _reply(f)
        sock.sendall(f"MAIL FROM:<{mail_from}>\r\n".encode())
        # Long enough for the proxy to pass MAIL on, short of the downstream's reply.
        time.sleep(0.3)
        return "mail"
    except (OSError, ConnectionError):
        return "lost"
    finally:
        f.close()
        _abort(sock)


_MAILLOG_TIME = re.compile(r"^(\w{3}) +(\d+) (\d\d):(\d\d):(\d\d)")
_MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}


def maillog_time(line: str, year: int | None = None) -> float | None:
    """The Unix time of a Postfix maillog_file line ("Nov 21 23:45:56 ..."), local time,
    whole seconds; None if the line has no such prefix."""
    m = _MAILLOG_TIME.match(line)
    if m is None or m.group(1) not in _MONTHS:
        return None
    year = year or datetime.now().year
    stamp = datetime(year, _MONTHS[m.group(1)], int(m.group(2)),
                     int(m.group(3)), int(m.group(4)), int(m.group(5)))
    return stamp.timestamp()
