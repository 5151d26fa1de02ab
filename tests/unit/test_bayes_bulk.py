"""Bulk learning waits for a busy store instead of stopping half-way."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time

from tests.unit.test_bayes import HAM, SPAM


def _learn(state: str, *files: str) -> subprocess.Popen:
    env = {**os.environ, "SMTPPROXY_CONFIG": ""}
    env.pop("STATE_DIRECTORY", None)
    return subprocess.Popen([sys.executable, "-m", "smtpproxy.cli", "learn", "spam", "--state-dir", state,
                             *files], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=os.path.join(os.path.dirname(__file__), "..", ".."))


def test_learn_waits_while_another_process_holds_the_write_lock(tmp_path):
    state = str(tmp_path / "state")
    for i, raw in enumerate(SPAM + HAM):
        (tmp_path / f"{i}.eml").write_bytes(raw)
    first = _learn(state, str(tmp_path / "0.eml"))
    assert first.wait(120) == 0, first.stderr.read()
    # A daemon (or another learn) holds the write lock for longer than the
    # mail path's store.timeout_s (1 s): the bulk command waits it out.
    db = sqlite3.connect(os.path.join(state, "smtpproxy.db"), isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    proc = _learn(state, *(str(tmp_path / f"{i}.eml") for i in range(1, len(SPAM + HAM))))
    try:
        time.sleep(4)
        assert proc.poll() is None, proc.stderr.read()  # still waiting, not failed
    finally:
        db.execute("COMMIT")
        db.close()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert f"{len(SPAM + HAM) - 1} learned".encode() in out
