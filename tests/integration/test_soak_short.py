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
