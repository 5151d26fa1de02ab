"""Locally submitted mail (sendmail, pickup) signed by the proxy as an after-queue content_filter.

sendmail/pickup never pass smtpd_proxy_filter, so the proxy also serves as
Postfix's after-queue content filter (FILTER_README, "advanced content
filter"):

    sendmail ─► postdrop ─► maildrop ─► pickup (content_filter=signer:...) ─► queue
      ─► signer (smtp client, XFORWARD) ─► smtpproxy outbound listener (signs)
      ─► smtpd 127.0.0.1 (content_filter empty) ─► queue ─► smtp ─► smtp-sink

The private instance's sendmail is run as root with MAIL_CONFIG naming its
configuration directory (root may use any directory; other users need it in
the default main.cf's alternate_config_directories). The signature is
checked at the sink by Mail::DKIM and opendkim-testmsg.
"""

from __future__ import annotations

import email.utils
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.support.dkim_verifiers import MailDkim, Opendkim, available_mail_dkim, available_opendkim
from tests.support.dns_server import DnsTestServer
from tests.support.net import free_port, port_open
from tests.support.pipeline import ProxyProcess
from tests.support.postfix import PostfixInstance, SmtpSink, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="sendmail -C/MAIL_CONFIG of a private instance needs root"),
    pytest.mark.skipif(not available_mail_dkim(), reason="libmail-dkim-perl is not installed"),
    pytest.mark.skipif(not available_opendkim(), reason="opendkim-tools is not installed"),
]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def after_queue(tmp_path_factory):
    base = tmp_path_factory.mktemp("after-queue")
    keys = base / "keys"
    keys.mkdir()
    out = subprocess.run([sys.executable, "-m", "smtpproxy.cli", "dkim", "keygen", "-d",
                          "example.org", "-s", "local2026", "--dir", str(keys)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120, check=True).stdout
    (keys / "key_table").write_text(f"local example.org:local2026:{keys / 'example.org.local2026.key'}\n")
    (keys / "signing_table").write_text("example.org local\n")
    dns = DnsTestServer({"local2026._domainkey.example.org": [
        ("TXT", re.findall(r'"([^"]*)"', out.splitlines()[-1]))]}).start()
    sink_port, proxy_port, reinject_port = free_port(), free_port(), free_port()
    sink = SmtpSink(base / "sink", sink_port)
    postfix = PostfixInstance(base / "postfix", relay_port=sink_port,
                              content_filter=f"signer:[127.0.0.1]:{proxy_port}")
    # The filter transport: a private socket (qmgr connects to private/signer),
    # which add_service's public "n" would not give.
    postfix.services.append("signer unix - - n - 10 smtp\n"
                            "  -o smtp_send_xforward_command=yes\n"
                            "  -o disable_mime_output_conversion=yes")
    postfix.add_service(f"127.0.0.1:{reinject_port}", {
        "content_filter": "",
        "smtpd_authorized_xforward_hosts": "127.0.0.0/8",
        "smtpd_client_restrictions": "", "smtpd_helo_restrictions": "",
        "smtpd_sender_restrictions": "",
        "smtpd_recipient_restrictions": "permit_mynetworks,reject",
        "mynetworks": "127.0.0.0/8",
        "receive_override_options": "no_unknown_recipient_checks,no_header_body_checks",
    })
    proxy = ProxyProcess(base / "proxy", f"""
state_dir = "{base / 'proxy' / 'state'}"
[proxy]
hostname = "filter.example.test"
[[proxy.listeners]]
name = "local"
listen = "127.0.0.1:{proxy_port}"
profile = "outbound"
downstream = "127.0.0.1:{reinject_port}"
[scan]
enabled = false
[sign]
key_table = "{keys / 'key_table'}"
signing_table = "{keys / 'signing_table'}"
[dns]
nameserver = "{dns.nameserver}"
""")
    sink.start()
    postfix.start()
    proxy.start(proxy_port)
    wait_until(lambda: port_open(reinject_port), 20, "re-injection port")
    verifiers = MailDkim(dns.host, dns.port), Opendkim(dns.host, dns.port)
    try:
        yield postfix, sink, proxy, verifiers
    finally:
        verifiers[1].stop()
        proxy.stop()
        postfix.stop()
        sink.stop()
        dns.stop()


def sendmail(postfix: PostfixInstance, message: bytes, sender: str) -> None:
    result = subprocess.run(["/usr/sbin/sendmail", "-f", sender, "-i", "bob@example.net"],
                            input=message, capture_output=True, timeout=60,
                            env=dict(os.environ, MAIL_CONFIG=str(postfix.conf)))
    assert result.returncode == 0, result.stderr.decode(errors="replace")


def compose(sender: str) -> tuple[bytes, str]:
    token = uuid.uuid4().hex
    return (f"From: Alice <{sender}>\nTo: bob@example.net\nSubject: cron report\n"
            f"Date: {email.utils.formatdate()}\nMessage-ID: <{token}@example.org>\n\n"
            f"All jobs ran.\ntoken {token}\n").encode(), token


def delivered(sink: SmtpSink, token: str) -> bytes:
    (got,) = wait_until(lambda: [m for m in sink.messages() if token.encode() in m.message],
                        60, "delivery at the sink")
    return got.message


def test_sendmail_submission_passes_the_filter_and_arrives_signed(after_queue):
    postfix, sink, proxy, (mail_dkim, opendkim) = after_queue
    raw, token = compose("alice@example.org")
    sendmail(postfix, raw, "alice@example.org")
    got = delivered(sink, token)
    assert got.count(b"DKIM-Signature:") == 1
    assert re.search(r"d=example.org s=local2026 a=rsa-sha256 result=pass", mail_dkim.verify(got))
    assert opendkim.verify(got) == (0, "")
    # It went through the proxy once (the re-injection smtpd has no content_filter).
    assert proxy.log_text().count("DKIM signed d=example.org s=local2026") >= 1
    assert "listener=local" in proxy.log_text() and "verdict=accept" in proxy.log_text()


def test_local_mail_from_a_foreign_domain_passes_unsigned(after_queue):
    postfix, sink, proxy, _verifiers = after_queue
    raw, token = compose("root@other.example")
    sendmail(postfix, raw, "root@other.example")
    assert b"DKIM-Signature:" not in delivered(sink, token)
