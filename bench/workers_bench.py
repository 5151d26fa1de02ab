#!/usr/bin/env python3
"""Scan throughput of the proxy with 1, 2, ... worker processes (proxy.workers), same run.

    .venv/bin/python bench/workers_bench.py [--workers 1,2] [--messages 2000] [--rounds 3]
                                            [--spamassassin [--state-dir DIR]]

Offline, and the proxy alone: Postfix's smtp-source sends 5 KB messages
(concurrency --concurrency) straight to the proxy's listener, the proxy
scores every message (scanning on, every default check; DNS answered by a
local server) and relays it to smtp-sink. No Postfix smtpd in the path, so
the figure is the proxy's, and the load generator and the sink (both small C
programs) take little of the machine's cores.

For each worker count the proxy is started afresh, warmed up, then measured;
the counts alternate over --rounds and each figure is the best of them (this
machine is shared and noisy). Printed per count: messages per second, the
ratio to the first count, the proxy's CPU per message (parent and workers,
user+system), the cores the proxy used in the best run (CPU seconds per
second: on an idle machine N workers can use up to N cores; on a shared one
the scheduler may give the program less), and the peak RSS (VmHWM) of each
worker process and of the supervising parent.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import MESSAGE_SIZE, cpu_seconds, smtp_source  # noqa: E402
from tests.support.dns_server import DnsTestServer  # noqa: E402
from tests.support.net import free_port, port_open  # noqa: E402
from tests.support.pipeline import ProxyProcess  # noqa: E402
from tests.support.postfix import SmtpSink, wait_until  # noqa: E402


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return sorted(out)


def config(base: Path, port: int, sink_port: int, nameserver: str, workers: int,
           spamassassin: bool, extra: str, state_dir: str = "") -> str:
    return f"""
state_dir = "{state_dir or base / 'state'}"
[log]
level = "info"
[proxy]
hostname = "filter.example.test"
workers = {workers}
max_sessions = 500
[[proxy.listeners]]
name = "inbound"
listen = "127.0.0.1:{port}"
downstream = "127.0.0.1:{sink_port}"
[scan]
enabled = true
[scan.spamassassin]
enabled = {"true" if spamassassin else "false"}
[dns]
nameserver = "{nameserver}"
{extra}
"""


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the children waited for: smtp-source
    return usage.ru_utime + usage.ru_stime


def measure(tmp: Path, workers: int, args, nameserver: str, sink) -> dict:
    sink_port = sink.port
    port = free_port()
    proxy = ProxyProcess(tmp / f"proxy-{workers}",
                         config(tmp / "shared", port, sink_port, nameserver, workers,
                                args.spamassassin, args.extra.replace("\\n", "\n"), args.state_dir))
    proxy.start(port)
    try:
        if workers > 1:
            wait_until(lambda: "started: " in proxy.log_text() or proxy.proc.poll() is not None,
                       60, "every worker ready")
        time.sleep(args.settle_s)  # a Hyperscan load from the cache, the first DNS answers
        smtp_source(port, 200, args.concurrency)  # warm-up: caches, pools, the allocator
        pids = [proxy.proc.pid, *children(proxy.proc.pid)]
        cpu = sum(cpu_seconds(pid) for pid in pids)
        others = children_cpu_seconds() + cpu_seconds(sink.proc.pid)
        rate = smtp_source(port, args.messages, args.concurrency)
        cpu = sum(cpu_seconds(pid) for pid in pids) - cpu
        others = children_cpu_seconds() + cpu_seconds(sink.proc.pid) - others
        workers_pids = pids[1:] if workers > 1 else pids
        return {"rate": rate, "cpu_ms": 1000 * cpu / args.messages,
                "others_ms": 1000 * others / args.messages,
                "rss": [peak_rss_mb(pid) for pid in workers_pids],
                "parent_rss": peak_rss_mb(proxy.proc.pid) if workers > 1 else None}
    finally:
        code = proxy.stop()
        if code not in (0, None):
            print(f"proxy with {workers} workers exited {code}:\n{proxy.log_text()[-2000:]}",
                  file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2", help="worker counts to compare (first: baseline)")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--settle-s", type=float, default=1.0)
    parser.add_argument("--spamassassin", action="store_true",
                        help="run the SpamAssassin rules too (Hyperscan compiled once, cached)")
    parser.add_argument("--state-dir", default="", metavar="DIR",
                        help="the proxy's state_dir (default: a fresh one); one kept between "
                             "runs keeps the compiled Hyperscan databases")
    parser.add_argument("--extra", default="", metavar="TOML",
                        help="appended to the proxy's configuration (\\n for a new line), "
                             "e.g. '[history]\\nenabled = false'")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]

    with tempfile.TemporaryDirectory(prefix="workers-bench-") as name:
        tmp = Path(name)
        dns = DnsTestServer({}).start()
        # smtp-sink without -d: it keeps nothing, as the benchmark needs.
        sink = SmtpSink(tmp / "sink", free_port())
        sink.proc = subprocess.Popen(["smtp-sink", "-u", "root", f"127.0.0.1:{sink.port}", "1024"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: port_open(sink.port), 10, "smtp-sink")
            runs: dict[int, list[dict]] = {w: [] for w in counts}
            for _ in range(args.rounds):
                for w in counts:
                    runs[w].append(measure(tmp, w, args, dns.nameserver, sink))
        finally:
            sink.stop()
            dns.stop()

    print(f"proxy workers benchmark: {MESSAGE_SIZE // 1024} KB messages, smtp-source -> proxy "
          f"(scanning on{', SpamAssassin rules' if args.spamassassin else ''}) -> smtp-sink, "
          f"concurrency {args.concurrency}, {args.messages} messages, best of {args.rounds} rounds")
    print(f"{'workers':>7} {'msg/s':>8} {'ratio':>6} {'CPU ms/msg':>11} {'cores used':>11} "
          f"{'client+sink ms/msg':>19} {'RSS MB per worker (peak)':>25} {'parent RSS MB':>14}")
    base = max(r["rate"] for r in runs[counts[0]])
    for w in counts:
        best = max(runs[w], key=lambda r: r["rate"])
        rss = " ".join(f"{x:.1f}" for x in best["rss"])
        parent = f"{best['parent_rss']:.1f}" if best["parent_rss"] is not None else "-"
        print(f"{w:>7} {best['rate']:>8.0f} {best['rate'] / base:>6.2f} "
              f"{statistics.median(r['cpu_ms'] for r in runs[w]):>11.2f} "
              f"{best['rate'] * best['cpu_ms'] / 1000:>11.2f} "
              f"{statistics.median(r['others_ms'] for r in runs[w]):>19.2f} {rss:>25} {parent:>14}")
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"load average at the end: {' '.join(load)} on {os.cpu_count()} CPUs (other "
          "sessions' load takes cores the workers would use: see docs/operations.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
