#!/usr/bin/env python3
"""Proxy CPU per message: this checkout against another, behind one Postfix, in alternating rounds.

    .venv/bin/python bench/proxy_ab.py OTHER_CHECKOUT [--messages 400] [--rounds 10]

Two proxies run side by side, this checkout's (A) and OTHER_CHECKOUT's (B,
e.g. a ``git worktree`` of main), each behind its own before-filter smtpd
of one private Postfix and re-injecting into the same listener. Rounds of
smtp-source (5 KB messages, concurrency 20) alternate between them, the
order flipping every round, and each round's proxy CPU per message (user +
system from /proc) is paired with the other's: on a shared, noisy machine
the per-round ratio B/A is far steadier than either figure alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import cpu_seconds, drain, smtp_source  # noqa: E402
from tests.support.net import free_port, port_open  # noqa: E402
from tests.support.pipeline import Pipeline  # noqa: E402
from tests.support.postfix import wait_until  # noqa: E402
from tests.support.procs import stop_process  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("other", type=Path, help="the other checkout (its smtpproxy package is run)")
    parser.add_argument("--messages", type=int, default=400, help="per round and proxy")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    other = args.other.resolve()

    with tempfile.TemporaryDirectory(prefix="proxy-ab-") as tmp:
        p = Pipeline(Path(tmp), proxy_extra="max_sessions = 500")
        other_port, other_before = free_port(), free_port()
        p.postfix.add_service(f"127.0.0.1:{other_before}", {
            "smtpd_proxy_filter": f"127.0.0.1:{other_port}",
            "smtpd_client_connection_count_limit": "0",
        })
        p.start()
        base = Path(tmp) / "other"
        (base / "state").mkdir(parents=True)
        config = (p.proxy.config_text
                  .replace(f"127.0.0.1:{p.proxy_port}", f"127.0.0.1:{other_port}")
                  .replace(str(Path(tmp) / "proxy" / "state"), str(base / "state")))
        (base / "smtpproxy.toml").write_text(config)
        with open(base / "smtpproxy.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "smtpproxy.cli", "run", "-c", str(base / "smtpproxy.toml")],
                env=dict(os.environ, PYTHONPATH=str(other)), cwd=other,
                stdout=subprocess.DEVNULL, stderr=log)
        try:
            wait_until(lambda: port_open(other_port) or proc.poll() is not None, 20, "the other proxy")
            if proc.poll() is not None:
                raise RuntimeError(f"the other proxy exited: {(base / 'smtpproxy.log').read_text()}")
            # Nothing is delivered: the queue is drained between runs.
            p.postfix.params["default_transport"] = "discard"
            p.postfix.params["relayhost"] = ""
            p.postfix.reload()
            time.sleep(1)
            paths = {"A": (p.inbound_port, p.proxy.proc.pid), "B": (other_before, proc.pid)}
            for port, _ in paths.values():
                smtp_source(port, 300, 10)  # warm-up: smtpd processes, pooled connections
            drain(p)
            cpu: dict[str, list[float]] = {name: [] for name in paths}
            rate: dict[str, list[float]] = {name: [] for name in paths}
            for round_no in range(args.rounds):
                for name in (paths if round_no % 2 == 0 else reversed(paths)):
                    port, pid = paths[name]
                    before = cpu_seconds(pid)
                    rate[name].append(smtp_source(port, args.messages, 20))
                    cpu[name].append((cpu_seconds(pid) - before) / args.messages)
                    drain(p)
        finally:
            stop_process(proc, 30)
            p.stop()

    print(f"proxy CPU per message, 5 KB messages, concurrency 20, {args.rounds} alternating rounds "
          f"of {args.messages}; A = this checkout, B = {other}")
    for name in paths:
        print(f"{name}: CPU ms/msg median {statistics.median(cpu[name]) * 1000:.3f} "
              f"(min {min(cpu[name]) * 1000:.3f}), msg/s median {statistics.median(rate[name]):.0f}")
    ratios = [a / b for a, b in zip(cpu["A"], cpu["B"], strict=True)]
    print("A/B CPU per round: " + " ".join(f"{r:.2f}" for r in ratios)
          + f" (median {statistics.median(ratios):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
