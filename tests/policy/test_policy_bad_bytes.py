"""Requests carrying bytes that are not UTF-8, sent raw to the real daemon.

Postfix passes envelope addresses, HELO names and the like through as the
client sent them (``strict_smtputf8 = no`` is its default), so 8-bit
non-UTF-8 values do reach a policy server; ``client_address`` is the one
attribute Postfix always sends as a numeric address. What is pinned here:

- a ``client_address`` that is not UTF-8 cannot be an address: the request
  gets the configured default action and one warning line, no traceback, and
  the connection goes on serving;
- any other attribute with such bytes is decided like any other value (a
  stray 8-bit byte in MAIL FROM must not be a way around greylisting), and the
  log line shows the bytes escaped, also through syslog, whose handler cannot
  encode them as they are.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from tests.policy.support import PolicyDaemon, rcpt

pytestmark = pytest.mark.integration

DEFAULT_TROUBLE = "DEFER_IF_PERMIT 4.3.0 Temporary policy service problem, try again later"


def raw_request(**attrs: bytes) -> bytes:
    """A request as bytes, so values can carry what format_request would not produce."""
    base = {k: v.encode() for k, v in rcpt().items()}
    base.update(attrs)
    out = b"request=smtpd_access_policy\nprotocol_state=RCPT\n"
    return out + b"".join(k.encode() + b"=" + v + b"\n" for k, v in base.items()) + b"\n"


@pytest.fixture
def daemon(tmp_path):
    started: list[PolicyDaemon] = []

    def make(**config) -> PolicyDaemon:
        d = PolicyDaemon(tmp_path / f"d{len(started)}", f"sqlite://{tmp_path}/state/p.db", **config)
        started.append(d)
        return d.start()

    yield make
    for d in started:
        d.stop()


def test_non_utf8_client_address_answers_default_without_traceback(daemon):
    d = daemon(policy={"default_action": "DEFER_IF_PERMIT"})
    with d.connect() as c:
        c.send(raw_request(client_address=b"192.0.2.\xff"))
        assert c.read_reply() == DEFAULT_TROUBLE
        # The same connection keeps serving (Postfix reuses it).
        assert c.ask(**rcpt(sasl_username="u")) == "DUNNO"
    log = d.log()
    assert "Traceback" not in log, log
    lines = [line for line in log.splitlines() if " WARNING: " in line or " ERROR: " in line]
    assert len(lines) == 1, log
    assert "client_address 192.0.2.\\xff" in lines[0], lines[0]
    assert d.proc.poll() is None


class SyslogDaemon(PolicyDaemon):
    """The daemon logging to syslog: a datagram socket this test reads."""

    def __init__(self, directory: Path, store_url: str, **config):
        super().__init__(directory, store_url, **config)
        self.syslog_path = str(self.dir / "log.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.syslog_path)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self.running = True
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        text = self.config.read_text()
        self.config.write_text(text.replace(
            "[log]\n", f'[log]\ndestination = "syslog"\nsyslog_socket = "{self.syslog_path}"\n'))

    def _read(self) -> None:
        while self.running:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append(data.decode("utf-8", "replace"))

    def log(self) -> str:
        return "\n".join(self.messages) + "\n" + self.stderr()

    def stderr(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        self.stop()
        self.running = False
        self.reader.join(5)
        self.sock.close()


def test_non_utf8_sender_is_greylisted_and_logged_escaped_through_syslog(tmp_path):
    d = SyslogDaemon(tmp_path / "s", f"sqlite://{tmp_path}/state/p.db")
    try:
        d.start()
        with d.connect() as c:
            c.send(raw_request(sender=b"sp\xe4m@x.example", helo_name=b"h\xffelo"))
            assert c.read_reply().startswith("DEFER_IF_PERMIT 4.7.1 Greylisted")
            # The same sender again: the same triplet (the bytes are kept, not dropped).
            c.send(raw_request(sender=b"sp\xe4m@x.example"))
            assert c.read_reply().startswith("DEFER_IF_PERMIT 4.7.1 Greylisted")
        deadline = time.monotonic() + 10
        while sum("sp\\xe4m@x.example" in m for m in d.messages) < 2:
            assert time.monotonic() < deadline, d.log()
            time.sleep(0.05)
        assert "greylist=new" in d.log() and "greylist=early" in d.log()
        errors = d.stderr()
        assert "Logging error" not in errors and "Traceback" not in errors, errors
    finally:
        d.close()


@pytest.mark.parametrize("label, raw", [
    ("ipv4 with a byte that is not UTF-8", b"192.0.2.\xff"),
    ("ipv6 with a byte that is not UTF-8", b"2001:db8::\xe4"),
    ("embedded NUL", b"192.0.2.1\x00"),
])
def test_non_utf8_or_nul_address_is_no_ip_instead_of_raising(label, raw):
    """What the admin CLI (argv is decoded like the codec does) and the
    whitelist/greylist lookups feed policy.net: never an exception."""
    from policy.net import NetworkSet, client_network, ip_key

    address = raw.decode("utf-8", "surrogateescape")
    assert ip_key(address) is None, label
    assert client_network(address) == address.lower(), label
    assert address not in NetworkSet(["0.0.0.0/0", "::/0"]), label
