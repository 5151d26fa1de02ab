"""Worker processes: the workers keys, the metrics sum, the supervisor's give-up, one compile.

The supervisor tests fork this test process, as the daemon forks itself;
the workers run a small function instead of a daemon.
"""

from __future__ import annotations

import fcntl
import os
import re
import time

import pytest

from smtpproxy.common import config, supervisor, workers
from smtpproxy.common.metrics import Registry, merge_snapshots
from smtpproxy.scan.spamassassin import matcher
from smtpproxy.scan.spamassassin.regex import split_match_op, translate

# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(("key", "value", "error"), [
    ("proxy.workers", 1, None),
    ("proxy.workers", 8, None),
    ("proxy.workers", "auto", None),
    ("policy.workers", "auto", None),
    ("proxy.workers", 0, "proxy.workers: expected a number of processes"),
    ("proxy.workers", -2, "proxy.workers: expected a number of processes"),
    ("proxy.workers", 257, "proxy.workers: expected a number of processes (1 to 256)"),
    ("proxy.workers", "many", "proxy.workers: expected a number of processes"),
    ("proxy.workers", "4", "proxy.workers: expected a number of processes"),
    ("policy.workers", 1.5, "policy.workers: expected an integer or a string"),
    ("policy.workers", True, "policy.workers: expected an integer or a string"),
    ("policy.workers", 0, "policy.workers: expected a number of processes"),
])
def test_workers_key(key, value, error):
    if error is None:
        cfg = config.load(None, {key: value})
        section = getattr(cfg, key.split(".")[0])
        assert section.workers == value
        return
    with pytest.raises(config.ConfigError) as exc:
        config.load(None, {key: value})
    assert str(exc.value).startswith(error), str(exc.value)


def test_auto_is_the_cpus_this_process_may_use():
    assert config.worker_count("auto") == len(os.sched_getaffinity(0))
    assert config.worker_count(3) == 3
    assert config.worker_count(1) == 1


def test_configdump_writes_workers_back():
    cfg = config.load(None, {"proxy.workers": "auto", "policy.workers": 3})
    text = config.dump(cfg)
    assert 'workers = "auto"' in text and "workers = 3" in text


# ---------------------------------------------------------------- metrics


def _registry(messages: int, sessions: float, canary: float | None, seconds: list[float]):
    r = Registry()
    counter = r.counter("m_total", "messages", ("verdict",))
    counter.inc("accept", amount=messages)
    r.gauge("sessions", "open", lambda: sessions)
    r.gauge("canary_ok", "state", lambda: canary, aggregate="max")
    hist = r.histogram("scan_seconds", "time", (0.1, 1.0))
    for s in seconds:
        hist.observe(s)
    return r


def test_scrape_shows_the_sum_of_every_worker():
    a = _registry(3, 2, 1.0, [0.05, 2.0])
    b = _registry(4, 5, 0.0, [0.5])
    retired = {name: e for name, e in _registry(10, 9, 1.0, [0.05]).snapshot().items()
               if e["kind"] != "gauge"}
    text = a.render([a.snapshot(), b.snapshot(), retired])
    assert 'm_total{verdict="accept"} 17' in text
    assert "sessions 7" in text  # the retired worker's gauges are not in
    assert "canary_ok 1" in text  # max, not sum
    assert 'scan_seconds_bucket{le="0.1"} 2' in text
    assert 'scan_seconds_bucket{le="1"} 3' in text
    assert "scan_seconds_count 4" in text
    assert "scan_seconds_sum 2.6" in text


def test_merge_leaves_a_gauge_out_when_no_worker_has_a_value():
    merged = merge_snapshots([_registry(1, 0, None, []).snapshot(),
                              _registry(1, 0, None, []).snapshot()])
    assert merged["canary_ok"]["value"] is None
    assert "canary_ok 0" not in _registry(1, 0, None, []).render([merged])


# ---------------------------------------------------------------- the supervisor


def _supervisor(tmp_path, worker_main) -> supervisor.Supervisor:
    cfg = config.load(None, {"state_dir": str(tmp_path / "state"), "proxy.workers": 2})
    return supervisor.Supervisor(
        "test", cfg, 2, "proxy.workers", lambda cfg: [], lambda: cfg,
        drain_timeout=lambda cfg: 1.0, worker_main=worker_main)


def test_worker_failing_at_start_stops_the_program(tmp_path, caplog):
    caplog.set_level("INFO")
    started = time.monotonic()
    assert _supervisor(tmp_path, lambda cfg: 3).run() == 3  # its status is the program's
    assert time.monotonic() - started < 10
    assert "exited with status 3 while starting: stopping" in caplog.text
    assert not list((tmp_path / "state").glob(".workers-*"))


def test_configuration_error_at_a_worker_start_exits_2(tmp_path, caplog):
    def bad_key(cfg) -> int:
        raise config.ConfigError("sign.keys[0].key_file", "cannot read /nonexistent")

    caplog.set_level("INFO")
    assert _supervisor(tmp_path, bad_key).run() == 2
    # Both workers fail; whichever the parent sees first stops the program.
    assert re.search(r"worker [01] exited with status 2 while starting: stopping", caplog.text)


def test_workers_that_keep_dying_make_the_program_give_up(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(supervisor, "RESTART_BACKOFF_S", 0.01)
    caplog.set_level("INFO")

    def die_soon(cfg) -> int:
        workers.notify_parent("READY=1")
        time.sleep(0.2)
        return 4

    assert _supervisor(tmp_path, die_soon).run() == 1
    assert "replacing it in 0.01s" in caplog.text and "replacing it in 0.02s" in caplog.text
    assert f"{supervisor.MAX_QUICK_DEATHS + 1} times in a row" in caplog.text
    assert "giving up" in caplog.text


# ---------------------------------------------------------------- one compile


RULES = {"body": [("B_WORD", "/\\bprize\\b/i")], "uri": [("U_HOST", "m{//www\\.}")]}


@pytest.mark.skipif(matcher.hyperscan is None, reason="hyperscan not installed")
def test_workers_sharing_the_cache_compile_the_rules_once(tmp_path):
    rules = {kind: [(name, translate(*split_match_op(text))) for name, text in items]
             for kind, items in RULES.items()}
    # Held here, the lock makes both processes wait at the same point: one
    # then compiles, the other finds the cache.
    lock = os.open(tmp_path / ".compile.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    pids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            try:
                os.close(lock)  # the lock stays held by the test's copy of it alone
                m = matcher.Matcher(rules, str(tmp_path), background=False)
                os._exit(10 + m.compiled_here if m.ready else 1)
            finally:
                os._exit(1)
        pids.append(pid)
    time.sleep(0.5)  # both are waiting for the lock
    os.close(lock)
    codes = sorted(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids)
    assert codes == [10, 11]  # one loaded the cache, one compiled
