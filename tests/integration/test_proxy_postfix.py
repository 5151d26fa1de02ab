"""The proxy between two real Postfix listeners: what arrives, and what never gets lost.

Path under test: smtplib client (from 127.0.0.2) -> Postfix before-filter smtpd
-> smtpproxy -> Postfix re-injection smtpd -> queue -> smtp -> smtp-sink.
"""

from __future__ import annotations

import collections
import re
import smtplib
import threading
import uuid

import pytest

from tests.support.pipeline import MAILDIR_DOMAIN, REJECTED_RCPT, TEMPFAIL_RCPT
from tests.support.postfix import wait_until

pytestmark = pytest.mark.integration

CLIENT_IP = "127.0.0.2"
CLIENT_HELO = "client.example.org"


def send(port: int, sender: str, rcpts: list[str], message: bytes,
         mail_options=(), rcpt_options=()) -> dict:
    with smtplib.SMTP("127.0.0.1", port, source_address=(CLIENT_IP, 0), timeout=120) as smtp:
        smtp.ehlo(CLIENT_HELO)
        return smtp.sendmail(sender, rcpts, message, list(mail_options), list(rcpt_options))


def make_message(body: bytes, subject: str = "test", extra_headers: bytes = b"") -> tuple[bytes, str]:
    msgid = f"<{uuid.uuid4().hex}@client.example.org>"
    head = (f"From: sender@example.org\r\nTo: rcpt@example.net\r\nSubject: {subject}\r\n"
            f"Message-ID: {msgid}\r\nDate: Sat, 21 Nov 2026 00:00:00 +0000\r\n").encode()
    return head + extra_headers + b"\r\n" + body, msgid


def delivered_with(pipeline, msgid: str, timeout: float = 60):
    """The sink's copies of the message, once complete: Postfix has removed it
    from its queue and smtp-sink's dump file no longer grows."""
    sizes: dict = {}

    def find():
        found = [m for m in pipeline.sink.messages() if msgid.encode() in m.message]
        if not found or not pipeline.postfix.queue_is_empty():
            return None
        now = {m.path: m.path.stat().st_size for m in found}
        stable = now == sizes
        sizes.clear()
        sizes.update(now)
        return found if stable else None
    return wait_until(find, timeout, f"delivery of {msgid}", interval=0.2)


def split_added_headers(delivered: bytes, original_lf: bytes) -> list[bytes]:
    """Assert ``delivered`` is ``original`` with header fields added on top; return their names."""
    assert delivered.endswith(original_lf), "message content changed in transit"
    prefix = delivered[: len(delivered) - len(original_lf)]
    names = [line.split(b":", 1)[0] for line in prefix.split(b"\n")
             if line and not line[:1].isspace()]
    return names


BODIES = {
    "8bit": (
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n",
        "Gr\u00fc\u00dfe aus K\u00f6ln \u20ac\r\nLatin-1 bytes: \xe9\xe8\r\n".encode("utf-8")
        + b"raw high bytes: \xff\xfe\x80\r\n",
        ["BODY=8BITMIME"],
    ),
    "long-line-5000": (b"", b"start\r\n" + b"x" * 5000 + b"\r\nend\r\n", []),
    "leading-dots": (b"", b".\r\n..\r\n.dot\r\n...three\r\n . space\r\nlast.\r\n", []),
    "empty-lines-and-trailing": (b"", b"\r\n\r\nbody after blank lines\r\n\r\n", []),
}


@pytest.mark.parametrize("port_name", ["inbound_port", "speed_adjust_port"])
@pytest.mark.parametrize("case", sorted(BODIES))
def test_message_bytes_arrive_identical_apart_from_added_headers(pipeline, case, port_name):
    extra, body, mail_options = BODIES[case]
    message, msgid = make_message(body, subject=case, extra_headers=extra)
    refused = send(getattr(pipeline, port_name), "sender@example.org", ["rcpt@example.net"],
                   message, mail_options)
    assert refused == {}
    (got,) = delivered_with(pipeline, msgid)
    added = split_added_headers(got.message, message.replace(b"\r\n", b"\n"))
    # Postfix's before-filter Received, our trace header, the re-injection Received.
    assert added == [b"Received", b"X-Smtpproxy", b"Received"]


def test_smtputf8_addresses_arrive_intact(pipeline):
    sender, rcpt = "s\u00e9nder@example.org", f"r\u00e9cipient@{MAILDIR_DOMAIN}"
    message, msgid = make_message("Subject line is ASCII, body \u00fc\r\n".encode(),
                                  extra_headers=b"Content-Type: text/plain; charset=utf-8\r\n")
    assert send(pipeline.inbound_port, sender, [rcpt], message, ["SMTPUTF8", "BODY=8BITMIME"]) == {}
    got = wait_until(lambda: [m for m in pipeline.maildir_messages() if msgid.encode() in m],
                     60, "maildir delivery")[0]
    # virtual(8) writes the envelope as Return-Path, X-Original-To and Delivered-To on top.
    assert got.startswith(
        f"Return-Path: <{sender}>\nX-Original-To: {rcpt}\nDelivered-To: {rcpt}\n".encode())
    added = split_added_headers(got, message.replace(b"\r\n", b"\n"))
    assert added == [b"Return-Path", b"X-Original-To", b"Delivered-To",
                     b"Received", b"X-Smtpproxy", b"Received"]


def test_ten_megabyte_message_arrives_identical(pipeline):
    line = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/ABCDEFGHIJKL\r\n"
    body = line * (10 * 1024 * 1024 // len(line) + 1)
    message, msgid = make_message(body, subject="ten megabytes")
    assert len(message) > 10 * 1024 * 1024
    assert send(pipeline.inbound_port, "sender@example.org", ["rcpt@example.net"], message) == {}
    (got,) = delivered_with(pipeline, msgid, timeout=120)
    split_added_headers(got.message, message.replace(b"\r\n", b"\n"))


def test_envelope_and_dsn_parameters_preserved(pipeline):
    message, msgid = make_message(b"dsn test\r\n")
    refused = send(
        pipeline.inbound_port, "bounces@example.org", ["rcpt@example.net"], message,
        mail_options=["RET=HDRS", "ENVID=QQ314159"],
        rcpt_options=["NOTIFY=SUCCESS,DELAY,FAILURE", "ORCPT=rfc822;original@example.net"],
    )
    assert refused == {}
    (got,) = delivered_with(pipeline, msgid)
    mail_args = got.mail_args.split()
    assert mail_args[0] == "<bounces@example.org>"
    assert "RET=HDRS" in mail_args and "ENVID=QQ314159" in mail_args
    (rcpt_args,) = got.rcpt_args
    assert rcpt_args.split()[0] == "<rcpt@example.net>"
    params = dict(p.split("=", 1) for p in rcpt_args.split()[1:])
    # Postfix stores NOTIFY as flags and writes them in its own order.
    assert set(params["NOTIFY"].split(",")) == {"SUCCESS", "DELAY", "FAILURE"}
    assert params["ORCPT"] == "rfc822;original@example.net"


def test_per_recipient_reject_reaches_client_for_that_recipient_only(pipeline):
    message, msgid = make_message(b"two recipients, one refused downstream\r\n")
    refused = send(pipeline.inbound_port, "sender@example.org",
                   ["good@example.net", REJECTED_RCPT], message)
    assert list(refused) == [REJECTED_RCPT]
    code, text = refused[REJECTED_RCPT]
    assert code == 550 and b"5.1.1" in text and b"No such user here" in text
    (got,) = delivered_with(pipeline, msgid)
    assert [r.split()[0] for r in got.rcpt_args] == ["<good@example.net>"]


def test_tempfail_at_one_rcpt_never_becomes_503_at_data(pipeline):
    """The downstream fails at one RCPT (421): the whole transaction fails
    temporarily. The sending MTA must hear 4xx at every later RCPT and at DATA;
    a 5xx there would bounce the recipient it had already been told was accepted."""
    message, msgid = make_message(b"one recipient fails downstream\r\n")
    with smtplib.SMTP("127.0.0.1", pipeline.inbound_port, source_address=(CLIENT_IP, 0),
                      timeout=120) as smtp:
        smtp.ehlo(CLIENT_HELO)
        assert smtp.mail("tempfail-rcpt@example.org")[0] == 250
        assert smtp.rcpt("good@example.net")[0] == 250
        failed = smtp.rcpt(TEMPFAIL_RCPT)
        later = smtp.rcpt("later@example.net")
        data = smtp.docmd("DATA")
        assert [failed[0] // 100, later[0] // 100, data[0] // 100] == [4, 4, 4], (failed, later, data)
        # RSET ends the failed transaction; the retry goes through.
        assert smtp.rset()[0] == 250
        assert smtp.sendmail("tempfail-rcpt@example.org", ["good@example.net"], message) == {}
    (got,) = delivered_with(pipeline, msgid)
    assert [r.split()[0] for r in got.rcpt_args] == ["<good@example.net>"]
    assert "failed at RCPT" in pipeline.proxy.log_text()


@pytest.mark.parametrize("mail, rcpt", [
    ("<s\x01nder@example.org>", "<rcpt@example.net>"),
    ("<sender@example.org>\tRET=HDRS", "<rcpt@example.net>"),
    ("<sender@example.org>", "<r\x7fcpt@example.net>"),
], ids=["0x01-in-mail", "tab-in-mail", "0x7f-in-rcpt"])
def test_control_character_in_mail_or_rcpt_gets_501_through_postfix(pipeline, mail, rcpt):
    """Postfix's front smtpd passes such arguments to the proxy (MAIL at the
    first RCPT). The proxy refuses them itself, permanently: a 451 would have
    the sender retry a malformed envelope until it gives up."""
    with smtplib.SMTP("127.0.0.1", pipeline.inbound_port, source_address=(CLIENT_IP, 0),
                      timeout=120) as smtp:
        smtp.ehlo(CLIENT_HELO)
        assert smtp.docmd(f"MAIL FROM:{mail}")[0] == 250  # the front answers MAIL itself
        code, text = smtp.docmd(f"RCPT TO:{rcpt}")
        assert (code, text.split()[0]) == (501, b"5.5.4"), (code, text)
        assert smtp.rset()[0] == 250
    assert "refused: control character in its arguments" in pipeline.proxy.log_text()


def test_real_client_ip_and_helo_reach_reinjection_listener(pipeline):
    message, msgid = make_message(b"xforward\r\n")
    send(pipeline.inbound_port, "sender@example.org", ["rcpt@example.net"], message)
    (got,) = delivered_with(pipeline, msgid)
    # Postfix's re-injection smtpd logs the XFORWARDed client for the queue id.
    queue_id = re.search(rb"with ESMTP id ([0-9A-F]+)", got.message).group(1).decode()
    log = pipeline.postfix.log_text()
    assert re.search(rf"{queue_id}: client=localhost\[127\.0\.0\.1\], orig_client=\S+\[{re.escape(CLIENT_IP)}\]", log)
    # The Received header written before the proxy names the real client and HELO,
    # and the proxy's own log line too.
    assert f"Received: from {CLIENT_HELO} (unknown [{CLIENT_IP}])".encode() in got.message
    assert re.search(rf"client=unknown\[{re.escape(CLIENT_IP)}\]:\d+ helo={CLIENT_HELO} ",
                     pipeline.proxy.log_text())


def test_one_log_line_per_message(pipeline):
    message, msgid = make_message(b"log line\r\n")
    send(pipeline.inbound_port, "logline@example.org", ["rcpt@example.net"], message)
    delivered_with(pipeline, msgid)
    lines = [line for line in pipeline.proxy.log_text().splitlines() if "from=<logline@example.org>" in line]
    assert len(lines) == 1
    line = lines[0]
    for field in ("listener=inbound", "nrcpt=1", "to=<rcpt@example.net>", "verdict=accept",
                  'reply="250 2.0.0 Ok:', 'queued as', "size=", "delay="):
        assert field in line


def test_reinjection_listener_down_tempfails_and_loses_nothing(fresh_pipeline):
    p = fresh_pipeline()
    saved = p.stop_reinjection()
    message, msgid = make_message(b"downstream is down\r\n")
    # Postfix opens the proxy connection at the first RCPT: that is where the 4xx lands.
    with pytest.raises(smtplib.SMTPRecipientsRefused) as failure:
        send(p.inbound_port, "sender@example.org", ["rcpt@example.net"], message)
    code, text = failure.value.recipients["rcpt@example.net"]
    assert code == 451 and text.startswith(b"4.3.0"), failure.value
    assert p.postfix.queue_is_empty() and p.sink.files() == []
    assert "unavailable at MAIL" in p.proxy.log_text()
    # The sender still has the message; its retry goes through once the listener is back.
    p.start_reinjection(saved)
    assert send(p.inbound_port, "sender@example.org", ["rcpt@example.net"], message) == {}
    assert len(delivered_with(p, msgid)) == 1


def test_thousand_messages_over_twenty_connections_each_delivered_once(pipeline):
    before = {m.path for m in pipeline.sink.messages()}
    per_connection, connections = 50, 20
    sent: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", pipeline.inbound_port,
                              source_address=(CLIENT_IP, 0), timeout=120) as smtp:
                smtp.ehlo(CLIENT_HELO)
                for i in range(per_connection):
                    message, msgid = make_message(f"connection {n} message {i}\r\n".encode() * 20)
                    assert smtp.sendmail("load@example.org", ["rcpt@example.net"], message) == {}
                    with lock:
                        sent.append(msgid)
        except BaseException as exc:  # reported below, with the thread's context
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors[:3]
    assert len(sent) == per_connection * connections
    total = len(before) + len(sent)
    wait_until(lambda: len(pipeline.sink.files()) >= total and pipeline.postfix.queue_is_empty(),
               240, "1000 deliveries")
    new = [m for m in pipeline.sink.messages() if m.path not in before]
    counts = collections.Counter(
        re.search(rb"Message-ID: (<[^>]+>)", m.message).group(1).decode() for m in new
    )
    assert len(new) == len(sent)
    assert set(counts) == set(sent)
    assert max(counts.values()) == 1


def test_postfix_reaches_proxy_over_unix_socket(fresh_pipeline):
    p = fresh_pipeline(unix_socket=True)
    assert oct(p.proxy_socket.stat().st_mode & 0o777) == "0o666"
    message, msgid = make_message(b"over a UNIX-domain socket\r\n")
    assert send(p.inbound_port, "sender@example.org", ["rcpt@example.net"], message) == {}
    (got,) = delivered_with(p, msgid)
    split_added_headers(got.message, message.replace(b"\r\n", b"\n"))
    # Admission by client_networks does not apply to a socket guarded by its mode.
    assert "refused" not in p.proxy.log_text()
