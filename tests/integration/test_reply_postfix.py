"""REPLY across two MX hosts sharing one redis-server, through real Postfix.

    host A: client ─► Postfix (submission role) ─► smtpproxy outbound listener ─► Postfix ─► sink
    host B: client ─► Postfix (port 25 role)    ─► smtpproxy inbound listener  ─► Postfix ─► sink
            both proxies: [store] url = the one redis-server

A user's message leaves through A, which remembers its Message-ID (hashed) in
Redis; the answer arrives at B. B scores it like any stranger's message at
greylist level, but with REPLY: it is accepted at once. The same message
answering an id nobody sent is greylisted (451), so the test can fail.
"""

from __future__ import annotations

import smtplib
import uuid

import pytest

from tests.support.dns_server import DnsTestServer
from tests.support.net import free_port, port_open
from tests.support.postfix import wait_until

pytestmark = pytest.mark.integration

CLIENT_IP = "127.0.0.2"


@pytest.fixture(scope="module")
def hosts(tmp_path_factory, redis_server):
    from tests.support.pipeline import Pipeline

    dns = DnsTestServer({"client.example.net": [("A", CLIENT_IP)]})
    dns.start()
    base = tmp_path_factory.mktemp("reply")
    # REPLY's shipped score (-4) would bring the answer under the greylist
    # threshold by itself; at -0.1 it stays at greylist level, so what lets
    # it through is REPLY's skip_greylist, not its score.
    config = f"""
greylist_delay_s = 60.0
scores = {{ REPLY = -0.1 }}
[store]
url = "{redis_server.url}"
key_prefix = "replytest:"
[dns]
nameserver = "{dns.nameserver}"
timeout_s = 1.0
"""
    a = Pipeline(base / "a", scan=True, extra_config=config)
    a.outbound_proxy_port, a.submission_port = free_port(), free_port()
    a.proxy.config_text += f"""
[[proxy.listeners]]
name = "outbound"
listen = "127.0.0.1:{a.outbound_proxy_port}"
profile = "outbound"
downstream = "127.0.0.1:{a.reinject_port}"
"""
    a.postfix.add_service(f"127.0.0.1:{a.submission_port}", {
        "smtpd_proxy_filter": f"127.0.0.1:{a.outbound_proxy_port}",
        "smtpd_client_connection_count_limit": "0"})
    b = Pipeline(base / "b", scan=True, extra_config=config)
    started = []
    try:
        for p in (a, b):
            p.start()
            started.append(p)
        wait_until(lambda: port_open(a.submission_port), 20, "submission port")
        yield a, b
    finally:
        for p in started:
            p.stop()
        dns.stop()


def send(port: int, raw: bytes, sender: str, rcpt: str) -> dict:
    with smtplib.SMTP("127.0.0.1", port, source_address=(CLIENT_IP, 0), timeout=60) as s:
        s.ehlo("client.example.net")
        return s.sendmail(sender, [rcpt], raw)


def delivered(p, token: str) -> str:
    (got,) = wait_until(lambda: [m for m in p.sink.messages() if token.encode() in m.message],
                        60, "delivery at the sink")
    return got.message.decode()


def answer(in_reply_to: str) -> tuple[bytes, str]:
    """Greylist level for a stranger: subject in capitals (3.0), no Date (1.0),
    From other than the envelope sender (0.3)."""
    token = uuid.uuid4().hex
    return (f"From: Bob <bob@partner.example>\r\nTo: alice@example.org\r\n"
            f"Subject: RE: THE QUARTERLY FIGURES\r\nMessage-ID: <{token}@partner.example>\r\n"
            f"In-Reply-To: <{in_reply_to}>\r\nReferences: <older@partner.example> <{in_reply_to}>\r\n"
            f"\r\nThanks, got them.\r\ntoken {token}\r\n").encode(), token


def test_an_answer_to_mail_sent_through_another_host_gets_reply_and_no_greylisting(hosts, redis_server):
    a, b = hosts
    sent_id = f"{uuid.uuid4().hex}@example.org"
    original = (f"From: Alice <alice@example.org>\r\nTo: bob@partner.example\r\nSubject: Figures\r\n"
                f"Message-ID: <{sent_id}>\r\n\r\nHere they are.\r\n").encode()
    assert send(a.submission_port, original, "alice@example.org", "bob@partner.example") == {}
    delivered(a, sent_id)
    # Remembered as a hash: the id itself is nowhere in the store.
    keys = redis_server.cli("--scan", "--pattern", "replytest:{reply}:*").split()
    assert keys and not [k for k in keys if "example.org" in k]

    stranger, stranger_token = answer(f"{uuid.uuid4().hex}@example.org")
    with pytest.raises(smtplib.SMTPDataError) as err:
        send(b.inbound_port, stranger, "bounces@partner.example", "alice@example.org")
    assert err.value.smtp_code == 451  # greylisted: no REPLY for an id nobody sent

    reply, token = answer(sent_id)
    assert send(b.inbound_port, reply, "bounces@partner.example", "alice@example.org") == {}
    text = delivered(b, token)
    assert f"REPLY(-0.10)[{sent_id}]" in text
    assert "X-Spam-Action: no action" in text


def test_inbound_mail_is_not_remembered(hosts, redis_server):
    _, b = hosts
    msgid = f"{uuid.uuid4().hex}@partner.example"
    raw = (f"From: Bob <bob@partner.example>\r\nTo: alice@example.org\r\nSubject: Hello\r\n"
           f"Message-ID: <{msgid}>\r\n\r\nHi.\r\n").encode()
    before = set(redis_server.cli("--scan", "--pattern", "replytest:{reply}:*").split())
    assert send(b.inbound_port, raw, "bob@partner.example", "alice@example.org") == {}
    delivered(b, msgid)
    after = set(redis_server.cli("--scan", "--pattern", "replytest:{reply}:*").split())
    assert after == before
