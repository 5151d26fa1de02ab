"""Scan settings per listener profile, through real Postfix.

    client ─► Postfix smtpd (port 25 role, smtpd_proxy_filter) ─► smtpproxy inbound listener
    client ─► Postfix smtpd (submission role)                  ─► smtpproxy outbound listener
              ─► Postfix re-injection ─► queue ─► smtp ─► smtp-sink

The same message goes both ways: from an address our own SPF fails (-all,
DMARC p=reject), with an address-literal EHLO and a subject in capitals. On
the inbound profile it gets an action; on the outbound default it gets none
and carries no result headers, while the proxy still logs its score.
"""

from __future__ import annotations

import email.utils
import smtplib
import time
import uuid

import pytest

from tests.support.dns_server import DnsTestServer
from tests.support.net import free_port, port_open
from tests.support.postfix import wait_until

pytestmark = pytest.mark.integration

CLIENT_IP = "127.0.0.2"
HELO = f"[{CLIENT_IP}]"
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
RESULT_FIELDS = ("X-Spamd-Result:", "X-Spam-Status:", "X-Spam-Level:", "X-Spam-Action:", "X-Spam:")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from tests.support.pipeline import Pipeline

    dns = DnsTestServer({
        # Our domain allows only its own relay: the user at home fails SPF.
        "example.org": [("TXT", "v=spf1 ip4:192.0.2.25 -all")],
        "_dmarc.example.org": [("TXT", "v=DMARC1; p=reject")],
    })
    dns.start()
    p = Pipeline(tmp_path_factory.mktemp("profiles"), scan=True, extra_config=f"""
greylist_delay_s = 1.0
[dns]
nameserver = "{dns.nameserver}"
timeout_s = 1.0
""")
    p.outbound_proxy_port, p.submission_port = free_port(), free_port()
    p.proxy.config_text += f"""
[[proxy.listeners]]
name = "outbound"
listen = "127.0.0.1:{p.outbound_proxy_port}"
profile = "outbound"
downstream = "127.0.0.1:{p.reinject_port}"
"""
    p.postfix.add_service(f"127.0.0.1:{p.submission_port}", {
        "smtpd_proxy_filter": f"127.0.0.1:{p.outbound_proxy_port}",
        "smtpd_client_connection_count_limit": "0"})
    p.start()
    try:
        wait_until(lambda: port_open(p.submission_port), 20, "submission port")
        yield p
    finally:
        p.stop()
        dns.stop()


def compose(body: bytes = b"the figures, as promised\r\n") -> tuple[bytes, str]:
    token = uuid.uuid4().hex
    return (f"From: Alice <alice@example.org>\r\nTo: Bob <bob@example.net>\r\n"
            f"Subject: QUARTERLY FIGURES FOR BOB\r\nDate: {email.utils.formatdate()}\r\n"
            f"Message-ID: <{token}@example.org>\r\n\r\n").encode() + body + f"token {token}\r\n".encode(), token


def send(port: int, raw: bytes) -> dict:
    with smtplib.SMTP("127.0.0.1", port, source_address=(CLIENT_IP, 0), timeout=60) as s:
        s.ehlo(HELO)
        return s.sendmail("alice@example.org", ["bob@example.net"], raw)


def delivered(p, token: str) -> str:
    (got,) = wait_until(lambda: [m for m in p.sink.messages() if token.encode() in m.message],
                        60, "delivery at the sink")
    return got.message.decode()


def test_inbound_profile_acts_on_the_users_mail_from_home(pipeline):
    raw, token = compose()
    assert send(pipeline.inbound_port, raw) == {}
    text = delivered(pipeline, token)
    # R_SPF_FAIL + DMARC_POLICY_REJECT + HELO_BAREIP + SUBJ_ALL_CAPS: add header.
    assert "X-Spam-Action: add header" in text and "X-Spam: Yes" in text
    for symbol in ("R_SPF_FAIL", "DMARC_POLICY_REJECT", "HELO_BAREIP"):
        assert symbol in text


def test_outbound_profile_gives_the_same_message_no_action_and_no_result_headers(pipeline):
    raw, token = compose()
    assert send(pipeline.submission_port, raw) == {}
    text = delivered(pipeline, token)
    head = text.split("\r\n\r\n", 1)[0]
    assert not [f for f in RESULT_FIELDS if f in head], head
    assert "profile=outbound" in head  # the trace header: it did pass the outbound listener
    log = pipeline.proxy.log_text()
    line = next(line for line in log.splitlines()
                if "profile=outbound" in line and "action=" in line and "verdict=accept" in line)
    # The score is still computed and logged: HELO_BAREIP and SUBJ_ALL_CAPS count,
    # SPF and DMARC of our own user are not checked.
    assert "action=no action" in line and "HELO_BAREIP" in line and "SUBJ_ALL_CAPS" in line
    assert "R_SPF" not in line and "DMARC" not in line


def test_outbound_profile_still_rejects_what_a_symbol_forces(pipeline):
    raw, token = compose(b"test message\r\n" + GTUBE + b"\r\n")
    with pytest.raises(smtplib.SMTPDataError) as err:
        send(pipeline.submission_port, raw)
    assert err.value.smtp_code == 550
    time.sleep(1.5)
    assert pipeline.postfix.queue_is_empty()
    assert not [m for m in pipeline.sink.messages() if token.encode() in m.message]
