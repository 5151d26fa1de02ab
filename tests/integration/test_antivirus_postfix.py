"""Antivirus through a real clamd (Debian's clamav-daemon, private, our own signatures)
and real Postfix: client ─► Postfix smtpd ─► smtpproxy (INSTREAM to clamd) ─► Postfix ─► sink."""

from __future__ import annotations

import asyncio
import base64
import smtplib
import time
import uuid

import pytest

from smtpproxy.common import config
from smtpproxy.common.store import open_store
from smtpproxy.scan.checks.antivirus import AntivirusCheck
from smtpproxy.scan.checks.base import CheckContext
from smtpproxy.scan.message import parse
from smtpproxy.transaction import ClientInfo
from tests.support.clamd import EICAR, EICAR_NAME, MARKER, MARKER_NAME, Clamd
from tests.support.dns_server import DnsTestServer
from tests.support.postfix import wait_until

pytestmark = pytest.mark.integration

CLIENT_IP = "127.0.0.2"


@pytest.fixture(scope="module")
def clamd(tmp_path_factory):
    server = Clamd(tmp_path_factory.mktemp("clamd"), stream_max_length="40M")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, clamd):
    from tests.support.pipeline import Pipeline

    dns = DnsTestServer({"client.example.org": [("A", CLIENT_IP)]})
    dns.start()
    p = Pipeline(tmp_path_factory.mktemp("av"), scan=True, extra_config=f"""
[scan.antivirus]
clamd = "{clamd.address}"
on_failure = "tempfail"
[dns]
nameserver = "{dns.nameserver}"
timeout_s = 1.0
""")
    p.start()
    try:
        yield p
    finally:
        p.stop()
        dns.stop()


def with_attachment(payload: bytes, name: str = "report.bin") -> tuple[bytes, str]:
    token = uuid.uuid4().hex
    encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    return (f"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: The report\r\n"
            f"Message-ID: <{token}@example.org>\r\nDate: Thu, 03 Dec 2026 10:00:00 +0000\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b{token}\"\r\n\r\n"
            f"--b{token}\r\nContent-Type: text/plain\r\n\r\nThe report, token {token}\r\n"
            f"--b{token}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Disposition: attachment; filename=\"{name}\"\r\n"
            f"Content-Transfer-Encoding: base64\r\n\r\n").encode() + encoded + f"--b{token}--\r\n".encode(), token


def send(p, raw: bytes) -> dict:
    with smtplib.SMTP("127.0.0.1", p.inbound_port, source_address=(CLIENT_IP, 0), timeout=120) as s:
        s.ehlo("client.example.org")
        return s.sendmail("alice@example.org", ["bob@example.net"], raw)


def delivered(p, token: str) -> list:
    return [m for m in p.sink.messages() if token.encode() in m.message]


def assert_refused_and_nothing_queued(p, raw: bytes, token: str, code: int) -> None:
    with pytest.raises(smtplib.SMTPDataError) as err:
        send(p, raw)
    assert err.value.smtp_code == code
    time.sleep(1.5)
    assert p.postfix.queue_is_empty() and delivered(p, token) == []


def test_clean_attachment_is_delivered(pipeline):
    raw, token = with_attachment(b"nothing to see here\n" * 100)
    assert send(pipeline, raw) == {}
    wait_until(lambda: delivered(pipeline, token), 60, "delivery")


def test_eicar_attachment_is_rejected_with_550_and_nothing_is_queued(pipeline):
    raw, token = with_attachment(EICAR, "eicar.com")
    assert_refused_and_nothing_queued(pipeline, raw, token, 550)
    assert f"CLAM_VIRUS(0.00)[{EICAR_NAME}" in pipeline.proxy.log_text()


def test_eicar_in_a_zip_archive_is_found_by_clamd(pipeline):
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("readme.txt", "see the other file")
        z.writestr("eicar.com", EICAR)
    raw, token = with_attachment(buf.getvalue(), "files.zip")
    assert_refused_and_nothing_queued(pipeline, raw, token, 550)


def test_20_mb_attachment_is_streamed_whole_within_clamds_limits(pipeline):
    # 20 MB whose last bytes are our custom signature: found only if clamd got
    # all of it (about 27 MB as base64, under the private StreamMaxLength 40M).
    payload = (bytes(range(256)) * (20 * 4096))[:20 * 1024 * 1024 - len(MARKER)] + MARKER
    raw, token = with_attachment(payload)
    assert len(raw) > 26 * 1024 * 1024
    assert_refused_and_nothing_queued(pipeline, raw, token, 550)
    assert f"CLAM_VIRUS(0.00)[{MARKER_NAME}" in pipeline.proxy.log_text()


def _check_ctx(raw: bytes, store=None) -> CheckContext:
    return CheckContext(message=parse(raw), client=ClientInfo(), mail_from="", rcpt_tos=[],
                        profile="inbound", resolver=None, store=store)


def _check(address: str) -> AntivirusCheck:
    return AntivirusCheck(config.load(None, {"scan.antivirus.clamd": address,
                                             "scan.antivirus.timeout_s": 8.0}))


def test_a_stream_over_clamds_limit_is_clam_virus_fail_with_the_reason(clamd):
    raw = b"Subject: big\r\n\r\n" + b"a" * (45 * 1024 * 1024)
    (hit,) = asyncio.run(_check(clamd.address).run(_check_ctx(raw)))
    assert hit.symbol == "CLAM_VIRUS_FAIL" and "size limit exceeded" in hit.options[0]


def test_verdicts_are_cached_by_body_hash(clamd, tmp_path):
    raw, _ = with_attachment(EICAR, "eicar.com")

    async def go():
        store = open_store(config.StoreConfig(), str(tmp_path))
        await store.open()
        try:
            first = await _check(clamd.address).run(_check_ctx(raw, store))
            # The same body from another relay (other trace fields), clamd gone: the cache answers.
            again = await _check(f"unix:{tmp_path}/no-clamd.sock").run(
                _check_ctx(b"Received: from elsewhere\r\n" + raw, store))
            return first, again
        finally:
            await store.close()

    first, again = asyncio.run(go())
    assert [h.symbol for h in first] == [h.symbol for h in again] == ["CLAM_VIRUS"]
    assert again[0].options == first[0].options


def test_clamd_stopped_gives_the_configured_tempfail(pipeline, clamd):
    # Last of the module: it stops clamd.
    clamd.stop()
    raw, token = with_attachment(b"a clean file\n")
    assert_refused_and_nothing_queued(pipeline, raw, token, 451)
    assert "CLAM_VIRUS_FAIL" in pipeline.proxy.log_text()
