"""A real private Postfix whose smtpd_recipient_restrictions ask our daemon.

Two smtpd listeners: "port 25" (check_policy_service without context:
greylisting) and "submission" (policy_context=submission: a per-sender
recipient limit at RCPT and a message limit at END-OF-MESSAGE, no greylisting). Accepted mail is relayed to smtp-sink. Clients
connect from distinct loopback addresses, and client_prefix_v4 = 32 keeps
their greylist state apart.
"""

from __future__ import annotations

import re
import smtplib
import time

import pytest

from tests.policy.support import PolicyDaemon
from tests.support.net import free_port
from tests.support.postfix import PostfixInstance, SmtpSink, wait_until

pytestmark = pytest.mark.integration

DELAY_S = 2.0


class Setup:
    def __init__(self, base):
        self.sink = SmtpSink(base / "sink", free_port())
        self.daemon = PolicyDaemon(
            base / "policy", f"sqlite://{base}/policy/state/p.db",
            greylist={"delay_s": DELAY_S, "client_prefix_v4": 32, "awl_deliveries": 2,
                      "awl_count_interval_s": 0.2},
            rules=[{"name": "sub", "key": ["sender"], "limits": ["2/1h"], "count": "recipients",
                    "action": "REJECT", "policy_contexts": ["submission"]},
                   {"name": "msgs", "key": ["sender"], "limits": ["1/1h"],
                    "count": "messages", "action": "HOLD", "policy_contexts": ["submission"]}],
        )
        self.port25, self.port587 = free_port(), free_port()
        policy = f"inet:127.0.0.1:{self.daemon.port}"
        self.postfix = PostfixInstance(
            base / "postfix", relay_port=self.sink.port,
            smtpd_recipient_restrictions=(
                f"check_policy_service {policy}, permit_mynetworks, reject_unauth_destination"),
            submission_recipient_restrictions=(
                f"check_policy_service {{ {policy}, policy_context=submission }}, "
                "permit_mynetworks, reject_unauth_destination"),
            submission_eod_restrictions=(
                f"check_policy_service {{ {policy}, policy_context=submission }}"),
            smtpd_policy_service_try_limit="1",
        )
        self.postfix.add_service(f"127.0.0.1:{self.port25}")
        self.postfix.add_service(
            f"127.0.0.1:{self.port587}",
            {"smtpd_recipient_restrictions": "$submission_recipient_restrictions",
             "smtpd_end_of_data_restrictions": "$submission_eod_restrictions"},
        )

    def start(self):
        self.sink.start()
        self.daemon.start()
        self.postfix.start()

    def stop(self):
        self.postfix.stop()
        self.daemon.stop()
        self.sink.stop()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    s = Setup(tmp_path_factory.mktemp("pfpolicy"))
    try:
        s.start()
        yield s
    finally:
        s.stop()


def rcpt_attempt(port: int, source: str, sender: str, recipients: list[str],
                 body: bytes | None = None) -> list[tuple[int, bytes]]:
    """One SMTP session; returns the RCPT replies (and DATA's if all were accepted)."""
    with smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=30) as smtp:
        smtp.ehlo("client.example")
        code, msg = smtp.mail(sender)
        assert code == 250, msg
        replies = [smtp.rcpt(r) for r in recipients]
        if body is not None and any(code == 250 for code, _ in replies):
            replies.append(smtp.data(body))
        else:
            smtp.rset()
    return replies


def sink_has(setup: Setup, needle: bytes) -> bool:
    return any(needle in m.message for m in setup.sink.messages())


def test_first_attempt_450_greylisted_retry_after_delay_accepted(setup):
    body = b"Subject: greylist test one\r\n\r\nhello\r\n"
    [(code, msg)] = rcpt_attempt(setup.port25, "127.0.0.2", "a@one.example", ["bob@dest.example"])
    assert code == 450 and b"4.7.1" in msg and b"Greylisted" in msg, msg
    time.sleep(DELAY_S + 0.5)
    replies = rcpt_attempt(setup.port25, "127.0.0.2", "a@one.example", ["bob@dest.example"], body)
    assert [c for c, _ in replies] == [250, 250], replies
    wait_until(lambda: sink_has(setup, b"greylist test one"), 30, "delivery to smtp-sink")
    [msg] = [m for m in setup.sink.messages() if b"greylist test one" in m.message]
    assert re.search(rb"X-Greylist: delayed [2-9]\d* seconds by smtpproxy-policy at mx\.test; ",
                     msg.message), msg.message[:300]


def test_client_auto_whitelisted_after_deliveries(setup):
    src = "127.0.0.3"
    rcpt_attempt(setup.port25, src, "c@three.example", ["bob@dest.example"])
    time.sleep(DELAY_S + 0.5)
    # Delivery 1 passes the greylist, delivery 2 (an interval later) completes the count.
    assert rcpt_attempt(setup.port25, src, "c@three.example", ["bob@dest.example"])[0][0] == 250
    time.sleep(0.3)
    assert rcpt_attempt(setup.port25, src, "c@three.example", ["bob@dest.example"])[0][0] == 250
    # A triplet never seen before from that client: accepted at once.
    replies = rcpt_attempt(setup.port25, src, "new@elsewhere.example", ["carol@dest.example"],
                           b"Subject: awl test\r\n\r\nhi\r\n")
    assert [c for c, _ in replies] == [250, 250], replies


def test_submission_rate_limit_exceeded_rejected_as_configured(setup):
    replies = rcpt_attempt(setup.port587, "127.0.0.4", "sender@corp.example",
                           ["r1@dest.example", "r2@dest.example", "r3@dest.example"])
    codes = [c for c, _ in replies]
    assert codes == [250, 250, 554], replies
    assert b"5.7.1" in replies[2][1] and b"rate limit exceeded" in replies[2][1]


def test_malformed_input_to_daemon_survived(setup):
    with setup.daemon.connect() as bad:
        bad.send(b"\x16\x03\x01 not a policy request\n\n")
        assert bad.read_reply() is None
    [(code, msg)] = rcpt_attempt(setup.port25, "127.0.0.5", "m@five.example", ["bob@dest.example"])
    assert code == 450 and b"Greylisted" in msg


def test_daemon_stopped_postfix_applies_its_default_action(setup):
    setup.daemon.stop()
    try:
        [(code, msg)] = rcpt_attempt(setup.port25, "127.0.0.6", "s@six.example",
                                     ["bob@dest.example"])
        # smtpd_policy_service_default_action: 451 4.3.5 Server configuration problem
        assert code == 451 and b"4.3.5" in msg, msg
    finally:
        setup.daemon.start()
    [(code, msg)] = rcpt_attempt(setup.port25, "127.0.0.6", "s@six.example", ["bob@dest.example"])
    assert code == 450 and b"Greylisted" in msg



def held_messages(setup: Setup) -> list:
    hold = setup.postfix.queue / "hold"
    return [p for p in hold.rglob("*") if p.is_file()] if hold.exists() else []


def test_message_limit_at_end_of_data_holds_the_excess(setup):
    # Counted per message at END-OF-MESSAGE ("msgs": 1/1h per sender, HOLD).
    first = rcpt_attempt(setup.port587, "127.0.0.8", "batch@corp.example",
                         ["a@dest.example"], b"Subject: batch one\r\n\r\nx\r\n")
    assert [c for c, _ in first] == [250, 250], first
    wait_until(lambda: sink_has(setup, b"batch one"), 30, "first message delivered")
    assert held_messages(setup) == []
    second = rcpt_attempt(setup.port587, "127.0.0.8", "batch@corp.example",
                          ["a@dest.example"], b"Subject: batch two\r\n\r\nx\r\n")
    assert [c for c, _ in second] == [250, 250], second  # accepted, but into the hold queue
    wait_until(lambda: held_messages(setup), 30, "second message in the hold queue")
    assert not sink_has(setup, b"batch two")
