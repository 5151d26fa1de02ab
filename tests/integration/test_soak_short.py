"""The soak of bench/soak.py, short: a real sending Postfix, every fault class once.

150 messages from a sending Postfix (which queues and retries on 4xx) through
the front smtpd, the proxy (scan, DKIM signing, Redis store, local DNS) and
the re-injection smtpd to smtp-sink, while each fault class is injected once:
the re-injection smtpd stopped and started, the proxy SIGKILLed and restarted,
SIGHUP reloads (one of a broken file), DNS not answering, redis-server stopped
(SIGCONT, and killed and restarted), clients cut off in DATA and after MAIL.
Nothing may be lost or bounced, no cut-off message may arrive, duplicates stay
within the kill windows counted from the logs (bench/soak.py says how), and
both queues end empty. Every wait is bounded; there is no timing assertion.
"""

from __future__ import annotations

import pytest

from bench.soak import FAULTS, SoakOptions, report, run_soak

pytestmark = pytest.mark.integration


def test_soak_short_loses_nothing_and_bounces_nothing_under_every_fault(tmp_path):
    opts = SoakOptions(messages=150, concurrency=10, seed=11, interval_s=(1.0, 2.0),
                       hold_s=(1.5, 2.5), cuts=3, max_faults=len(FAULTS),
                       drain_timeout_s=120.0)
    result = run_soak(tmp_path, opts)
    text = "\n".join(report(result, opts))
    assert all(result.fault_counts[kind] >= 1 for kind in FAULTS), text
    assert result.lost == [], text
    assert result.bounced == 0, text
    assert result.duplicates <= result.allowed, text
    assert result.leaked == [] and result.strangers == [], text
    assert result.queue_empty, text
    assert result.notes == [], text
    assert result.injected == opts.messages and result.arrived == opts.messages, text


def test_kill_windows_are_counted_from_both_postfix_logs():
    """The soak's allowance for duplicates, on log lines as the two Postfix instances write them."""
    from bench.soak import SENDER, kill_windows, unanswered_copies
    from tests.support.sender import maillog_time

    filter_log = "\n".join([
        "Dec 04 23:54:01 mx pftest/cleanup[1]: 4jhAAA: message-id=<a@example.org>",
        f"Dec 04 23:54:01 mx pftest/qmgr[2]: 4jhAAA: from=<{SENDER}>, size=3303, nrcpt=1",
        "Dec 04 23:54:02 mx pftest/cleanup[1]: 4jhBBB: message-id=<b@example.org>",
        f"Dec 04 23:54:02 mx pftest/qmgr[2]: 4jhBBB: from=<{SENDER}>, size=3303, nrcpt=1",
        "Dec 04 23:54:30 mx pftest/cleanup[1]: 4jhCCC: message-id=<c@example.org>",
        f"Dec 04 23:54:30 mx pftest/qmgr[2]: 4jhCCC: from=<{SENDER}>, size=3303, nrcpt=1",
        # Postfix's own notice to the postmaster: not one of the sender's messages.
        "Dec 04 23:54:31 mx pftest/qmgr[2]: 4jhDDD: from=<double-bounce@mx.example.test>, size=9",
    ])
    sender_log = ("Dec 04 23:54:01 sender pfsender/smtp[3]: 4jhS1: to=<sink@example.net>, "
                  "dsn=2.0.0, status=sent (250 2.0.0 Ok: 3303 bytes queued as 4jhAAA)")
    unanswered = unanswered_copies(filter_log, sender_log)
    assert sorted(unanswered) == ["4jhBBB", "4jhCCC"]
    kill = maillog_time("Dec 04 23:54:03 x") + 0.4
    allowed, unexplained = kill_windows(unanswered, [kill])
    assert (allowed, unexplained) == (1, ["4jhCCC"])
