"""Forged verdicts, hidden fields, hostile envelopes and hostile structure, through real Postfix.

A private Postfix front (smtpd_proxy_filter) -> smtpproxy (scanning, ARC
sealing) -> Postfix re-injection -> sink. What a sender wrote under our
authserv-id never reaches the mailbox nor our ARC seal; a field hidden behind
a bare CR is removed like any other; an envelope with bytes that are not
UTF-8 (a front with ``smtputf8_enable = no`` passes them) gets the scan's
answer, not a 451 on every retry; a message of hostile structure is scanned
with its defect while other sessions keep being answered.
"""

from __future__ import annotations

import re
import smtplib
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.support.dns_server import DnsTestServer
from tests.support.hostile import HEAD, header_flood
from tests.support.net import free_port, port_open
from tests.support.postfix import wait_until

pytestmark = pytest.mark.integration

CLIENT_IP = "127.0.0.2"
OURS = "filter.example.test"  # the pipeline's proxy.hostname: our authserv-id
ROOT = Path(__file__).resolve().parents[2]
FORGED = (b"Authentication-Results: (comment) filter.example.test; dkim=pass header.d=paypal.com\r\n"
          b"Authentication-Results: filter.example.test 1; dmarc=pass header.from=paypal.com\r\n")


def arc_key(directory: Path, dns: DnsTestServer) -> Path:
    out = subprocess.run(
        [sys.executable, "-m", "smtpproxy.cli", "dkim", "keygen", "-d", "forwarder.example", "-s",
         "arc1", "--type", "rsa", "--dir", str(directory)],
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("arc1._domainkey.forwarder.example. IN TXT"))
    dns.add("arc1._domainkey.forwarder.example", "TXT", re.findall(r'"([^"]*)"', line))
    return directory / "forwarder.example.arc1.key"


@pytest.fixture(scope="module")
def dns():
    server = DnsTestServer({
        "example.org": [("TXT", f"v=spf1 ip4:{CLIENT_IP} -all")],
        "client.example.org": [("A", CLIENT_IP)],
    }).start()
    yield server
    server.stop()


def _pipeline(base: Path, dns: DnsTestServer, scan: bool):
    from tests.support.pipeline import Pipeline

    keys = base / "keys"
    keys.mkdir(parents=True)
    key = arc_key(keys, dns)
    p = Pipeline(base / "p", scan=scan, extra_config=f"""
greylist_delay_s = 1.0
[sign.arc]
profiles = ["inbound"]
domain = "forwarder.example"
selector = "arc1"
key_file = "{key}"
[dns]
nameserver = "{dns.nameserver}"
timeout_s = 1.0
""")
    # A front that does not speak SMTPUTF8 and passes 8-bit envelope bytes on.
    p.latin_port = free_port()
    p.postfix.add_service(f"127.0.0.1:{p.latin_port}", {
        "smtpd_proxy_filter": f"127.0.0.1:{p.proxy_port}", "smtputf8_enable": "no",
        "smtpd_client_connection_count_limit": "0"})
    p.start()
    wait_until(lambda: port_open(p.latin_port), 20, "the smtputf8_enable=no front")
    return p


@pytest.fixture(scope="module")
def scanning(tmp_path_factory, dns):
    p = _pipeline(tmp_path_factory.mktemp("forgery-scan"), dns, scan=True)
    yield p
    p.stop()


@pytest.fixture(scope="module")
def sealing_only(tmp_path_factory, dns):
    p = _pipeline(tmp_path_factory.mktemp("forgery-seal"), dns, scan=False)
    yield p
    p.stop()


def message(extra_head: bytes = b"", body: bytes = b"Hello Bob\r\n", subject=b"Lunch") -> tuple[bytes, str]:
    token = uuid.uuid4().hex
    return (extra_head + b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: " + subject
            + b"\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <" + token.encode()
            + b"@example.org>\r\n\r\n" + body + b"token " + token.encode() + b"\r\n"), token


def send(port: int, raw: bytes, sender="alice@example.org") -> dict:
    with smtplib.SMTP("127.0.0.1", port, source_address=(CLIENT_IP, 0), timeout=120) as s:
        s.ehlo("client.example.org")
        return s.sendmail(sender, ["bob@example.net"], raw)


def delivered(p, token: str) -> bytes:
    (got,) = wait_until(lambda: [m for m in p.sink.messages() if token.encode() in m.message],
                        60, "delivery at the sink")
    return got.message


# ---------------------------------------------------------------- D3, D6


def test_forged_authres_with_comment_before_our_id_is_removed(scanning):
    raw, token = message(FORGED)
    assert send(scanning.inbound_port, raw) == {}
    got = delivered(scanning, token)
    assert b"paypal.com" not in got, got.decode(errors="replace")
    assert re.search(rb"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=forwarder.example; s=arc1;", got)
    assert re.search(rb"Authentication-Results: filter.example.test;\s+spf=pass", got)


def test_forged_authres_is_not_sealed_when_scanning_is_off(sealing_only):
    raw, token = message(FORGED)
    assert send(sealing_only.inbound_port, raw) == {}
    got = delivered(sealing_only, token)
    assert b"paypal.com" not in got, got.decode(errors="replace")
    assert re.search(rb"ARC-Authentication-Results: i=1; filter.example.test;\r?\n arc=none\r?\n", got)


def test_forged_authres_behind_bare_cr_is_removed(scanning):
    # Postfix passes a bare CR on inside a line; a mail client reads it as a line end.
    raw, token = message(b"X-Note: hello\rAuthentication-Results: filter.example.test; dkim=pass "
                         b"header.d=paypal.com\r\n")
    assert send(scanning.inbound_port, raw) == {}
    got = delivered(scanning, token)
    assert b"paypal.com" not in got, got.decode(errors="replace")


# ---------------------------------------------------------------- D7


def test_non_utf8_envelope_sender_gets_a_deliberate_reply_never_a_loop(scanning):
    # Postfix 3.7 (Debian 12) refuses 8-bit envelope addresses with 501 5.1.7
    # even with smtputf8_enable = no, and so does its re-injection listener:
    # through it the scan never sees them. A front that passes them gets the
    # scan's answer (greylisting hashes the envelope, where they crashed the
    # scan); tests/unit/test_forged_results.py pins that without Postfix.
    raw, token = message(subject=b"ONE MORE IMPORTANT NOTICE FOR YOU")
    sender = b"\xff\xfealice@example.org"

    def attempt() -> tuple[int, bytes]:
        with socket.create_connection(("127.0.0.1", scanning.latin_port), timeout=60) as s:
            f = s.makefile("rwb")

            def cmd(line: bytes) -> tuple[int, bytes]:
                if line:
                    f.write(line + b"\r\n")
                    f.flush()
                reply = b""
                while True:
                    got = f.readline()
                    reply += got
                    if got[3:4] != b"-":
                        return int(got[:3]), reply

            assert cmd(b"")[0] == 220
            assert cmd(b"EHLO client.example.org")[0] == 250
            code, reply = cmd(b"MAIL FROM:<" + sender + b">")
            if code == 501:
                return code, reply
            assert code == 250, reply
            assert cmd(b"RCPT TO:<bob@example.net>")[0] == 250
            assert cmd(b"DATA")[0] == 354
            f.write(raw.replace(b"\r\n.", b"\r\n..") + b".\r\n")
            f.flush()
            result = cmd(b"")
            cmd(b"QUIT")
            return result

    first = attempt()
    if first[0] == 501:
        assert b"5.1.7" in first[1]
        assert "Traceback" not in scanning.proxy.log_text()
        return
    assert first[0] in (250, 451), first
    if first[0] == 451:
        assert b"4.7.1" in first[1], first  # greylisted, on purpose
        time.sleep(1.5)
        second = attempt()
        assert second[0] == 250, second
    delivered(scanning, token)
    log = scanning.proxy.log_text()
    assert "Traceback" not in log and "scan failed" not in log


# ---------------------------------------------------------------- D11


def test_million_header_fields_are_bounded_and_others_are_answered(scanning):
    # Scaled down for the suite (bench/hostile_bench.py: the audit's 1.3 million);
    # the unbounded parser took about 0.4 s for these on the event loop.
    raw = header_flood(150_000)
    token = uuid.uuid4().hex
    raw = raw.replace(b"\r\nbody\r\n", b"\r\nbody token " + token.encode() + b"\r\n")
    replies: list[int] = []
    stop = threading.Event()

    def heartbeat():
        with socket.create_connection(("127.0.0.1", scanning.proxy_port), timeout=30) as s:
            f = s.makefile("rwb")
            f.readline()
            f.write(b"EHLO heartbeat.example\r\n")
            f.flush()
            while f.readline()[3:4] == b"-":
                pass
            while not stop.is_set():
                f.write(b"NOOP\r\n")
                f.flush()
                replies.append(int(f.readline()[:3]))  # a bounded wait: the socket's timeout
                time.sleep(0.01)

    beat = threading.Thread(target=heartbeat)
    beat.start()
    try:
        assert send(scanning.inbound_port, raw) == {}
    finally:
        stop.set()
        beat.join(60)
    assert replies and set(replies) == {250}
    got = delivered(scanning, token)
    assert re.search(rb"MIME_BAD\([0-9.]+\)\[[^\]]*TooManyHeaderFields", got)
    assert HEAD.split(b"\r\n")[0] in got
