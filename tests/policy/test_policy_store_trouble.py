"""The real daemon on an SQLite store in trouble: locked, or corrupt at start-up.

Store trouble must never pass unnoticed (greylisting silently off) nor stop
the daemon (Postfix would then defer every message): the request gets the
configured default action at once, a rate-limited WARNING says so, the
metrics count it, and a store that could not be opened at start-up is
retried in the background until it works. Every wait is a bounded loop.
"""

from __future__ import annotations

import sqlite3
import time
import urllib.request

import pytest

from tests.policy.support import PolicyDaemon, rcpt
from tests.support.net import free_port

pytestmark = pytest.mark.integration

DEFAULT_TROUBLE = "DEFER_IF_PERMIT 4.3.0 Temporary policy service problem, try again later"


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def lines(log: str, *words: str) -> list[str]:
    return [line for line in log.splitlines() if all(w in line for w in words)]


@pytest.fixture
def daemons():
    started: list[PolicyDaemon] = []
    yield started
    for d in started:
        d.stop()


def test_sqlite_locked_answers_default_and_warns(tmp_path, daemons):
    db = tmp_path / "state" / "policy.db"
    port = free_port()
    d = PolicyDaemon(tmp_path / "d", f"sqlite://{db}",
                     policy={"default_action": "DEFER_IF_PERMIT", "metrics_listen": f"127.0.0.1:{port}"},
                     store={"sqlite_busy_timeout_s": 0.1})
    daemons.append(d.start())
    assert d.ask(**rcpt("192.0.2.1")).startswith("DEFER_IF_PERMIT 4.7.1 Greylisted")

    holder = sqlite3.connect(db, timeout=0, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with d.connect(timeout_s=20) as c:
            answers = [c.ask(**rcpt(f"198.51.100.{i}")) for i in range(5)]
        assert answers == [DEFAULT_TROUBLE] * 5
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    log = d.log()
    warnings = lines(log, " WARNING: ", "store", "greylist")
    assert len(warnings) == 1, log  # rate-limited: one line, not one per request
    assert "locked" in warnings[0], warnings[0]
    m = scrape(port)
    assert m['smtpproxy_policy_store_errors_total{operation="greylist"}'] == 5
    assert m['smtpproxy_policy_default_action_total{reason="store"}'] == 5
    # The lock is gone: greylisting is back, with no restart.
    assert d.ask(**rcpt("203.0.113.1")).startswith("DEFER_IF_PERMIT 4.7.1 Greylisted")


def test_corrupt_sqlite_file_at_start_answers_default_then_recovers(tmp_path, daemons):
    db = tmp_path / "state" / "policy.db"
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not an SQLite database\n" * 200)
    port = free_port()
    d = PolicyDaemon(tmp_path / "d", f"sqlite://{db}",
                     policy={"metrics_listen": f"127.0.0.1:{port}"},
                     store={"backoff_s": 0.1, "backoff_max_s": 0.5})
    daemons.append(d.start())  # before: "cannot start", exit 1, Postfix defers everything
    assert d.proc.poll() is None
    assert d.ask(**rcpt("192.0.2.1")) == "DUNNO"  # the fail-open default action
    errors = lines(d.log(), " ERROR: ", "store")
    assert len(errors) == 1 and "not a database" in errors[0], d.log()
    # It keeps trying in the background, and keeps failing while the file is bad.
    deadline = time.monotonic() + 20
    while scrape(port)['smtpproxy_policy_store_errors_total{operation="open"}'] < 3:
        assert time.monotonic() < deadline, "no retries:\n" + d.log()
        time.sleep(0.1)
    assert scrape(port)['smtpproxy_policy_store_errors_total{operation="greylist"}'] == 1
    assert lines(d.log(), " WARNING: ", "store still cannot be opened", "not a database"), d.log()
    assert d.ask(**rcpt("192.0.2.1")) == "DUNNO"

    db.unlink()  # the administrator moves the broken file away
    deadline = time.monotonic() + 20
    while not d.ask(**rcpt("192.0.2.2")).startswith("DEFER_IF_PERMIT 4.7.1 Greylisted"):
        assert time.monotonic() < deadline, "the store was not opened again:\n" + d.log()
        time.sleep(0.1)
    assert lines(d.log(), "store", "usable again"), d.log()
    # Retries stopped once it worked: the open counter no longer moves.
    opened = scrape(port)['smtpproxy_policy_store_errors_total{operation="open"}']
    time.sleep(1.0)
    assert scrape(port)['smtpproxy_policy_store_errors_total{operation="open"}'] == opened
    # And the state persists in the new file.
    assert d.ask(**rcpt("192.0.2.2")).startswith("DEFER_IF_PERMIT 4.7.1 Greylisted")
    assert db.exists()


def test_corrupt_sqlite_at_start_then_reload_to_another_store_stops_retrying(tmp_path, daemons):
    bad = tmp_path / "state" / "policy.db"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\xff" * 8192)
    good = tmp_path / "state2" / "policy.db"
    port = free_port()
    d = PolicyDaemon(tmp_path / "d", f"sqlite://{bad}",
                     policy={"metrics_listen": f"127.0.0.1:{port}"},
                     store={"backoff_s": 0.1, "backoff_max_s": 0.2})
    daemons.append(d.start())
    assert d.ask(**rcpt("192.0.2.1")) == "DUNNO"
    # SIGHUP with the same store: still retrying, still answering the default.
    d.hup()
    deadline = time.monotonic() + 15
    while d.log().count("configuration reloaded") < 1:
        assert time.monotonic() < deadline, d.log()
        time.sleep(0.05)
    before = scrape(port)['smtpproxy_policy_store_errors_total{operation="open"}']
    while scrape(port)['smtpproxy_policy_store_errors_total{operation="open"}'] <= before:
        assert time.monotonic() < deadline, "retries stopped at the reload:\n" + d.log()
        time.sleep(0.05)
    assert d.ask(**rcpt("192.0.2.1")) == "DUNNO"
    # SIGHUP with another store that opens: it is used, the old one is no longer tried.
    d.config.write_text(d.config.read_text().replace(str(bad), str(good)))
    d.hup()
    while d.log().count("configuration reloaded") < 2:
        assert time.monotonic() < deadline, d.log()
        time.sleep(0.05)
    assert d.ask(**rcpt("192.0.2.1")).startswith("DEFER_IF_PERMIT 4.7.1 Greylisted")
    opened = scrape(port)['smtpproxy_policy_store_errors_total{operation="open"}']
    time.sleep(1.0)
    assert scrape(port)['smtpproxy_policy_store_errors_total{operation="open"}'] == opened
    assert "usable again" not in d.log()
    proc = d.proc
    d.stop()
    assert proc.returncode == 0 and "smtpproxy-policy stopped" in d.log()
