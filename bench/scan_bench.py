#!/usr/bin/env python3
"""Scan throughput on the SpamAssassin corpus: smtpproxy vs SpamAssassin vs rspamd, same run.

    .venv/bin/python bench/scan_bench.py [--messages 1000] [--no-install] [--skip-sa] [--skip-rspamd]
                                         [--spamassassin] [--workers N]

--spamassassin turns on smtpproxy's SpamAssassin rules check (off by
default) with the system's rule files; its Hyperscan databases are compiled
(or loaded from the state_dir cache) before anything is timed.

smtpproxy: the shipped engine with every check on; every DNS question (SPF,
and DKIM/DMARC/DNSBL once they are there) is answered by a local DNS server
on loopback, so nothing leaves the machine. Each message is scanned as if
sent by its own From domain from 192.0.2.1, so lookups differ per message.
The one-client run goes first and fetches every answer; the eight-concurrent
run reuses the resolver, so it scans with the answers cached (as a busy
server sees repeat senders). CPU per message is printed for both.
--workers N runs the eight-concurrent pass once more in N forked processes
(as ``proxy.workers = N`` serves: one engine and event loop each, eight in
flight in all), since the rspamd here runs two normal workers.

SpamAssassin: Debian's spamd in local-only mode (-L: no network tests),
driven by spamc. rspamd: Debian's rspamd with its network modules (rbl,
fuzzy, surbl, url reputation...) off and its DNS pointed at the same local
server, driven by rspamc. Both are installed with apt-get unless
--no-install, and skipped with a reason when they cannot run.

Printed per system: messages/s with one client and with eight concurrent
scans, p50/p99 time per message where the client can tell, and peak RSS;
then ratios against rspamd and SpamAssassin.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import apt_install, pct, start_rspamd, stop  # noqa: E402
from smtpproxy.common import config  # noqa: E402
from smtpproxy.common.dns import Resolver  # noqa: E402
from smtpproxy.common.runtime import run  # noqa: E402
from smtpproxy.scan.checks.base import CheckContext  # noqa: E402
from smtpproxy.scan.hook import build_engine  # noqa: E402
from smtpproxy.scan.message import parse  # noqa: E402
from smtpproxy.transaction import ClientInfo  # noqa: E402
from tests.support.dns_server import DnsTestServer  # noqa: E402
from tests.support.net import free_port, port_open  # noqa: E402
from tests.support.postfix import wait_until  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpora" / "spam-ham" / "spamassassin-public-corpus"


def corpus(n: int) -> list[Path]:
    files = sorted(p for p in CORPUS.rglob("*") if p.is_file())
    step = max(1, len(files) // n)  # spread over spam and ham alike
    return files[::step][:n]


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total / 1024


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [pid, *(int(x) for x in out.split())]


# ---------------------------------------------------------------- smtpproxy


def bench_smtpproxy(files: list[Path], dns: DnsTestServer, spamassassin: bool = False,
                    workers: int = 1) -> dict:
    overrides: dict = {"dns.nameserver": dns.nameserver, "log.level": "error"}
    if spamassassin:
        overrides["scan.spamassassin.enabled"] = True
    cfg = config.load(None, overrides)
    engine = build_engine(cfg)
    for check in engine.checks:
        if getattr(check, "name", "") == "spamassassin" and hasattr(check, "matcher"):
            check.matcher.wait(1800)  # the timed scans run with Hyperscan, not with re alone
    raws = [p.read_bytes() for p in files]
    results: dict = {}
    resolver_cache: dict = {}

    async def main() -> None:
        resolver = Resolver(cfg.dns)
        for concurrency in (1, 8):
            start, cpu = time.perf_counter(), time.process_time()
            times = await scan_all(engine, resolver, raws, concurrency)
            results[concurrency] = (len(raws) / (time.perf_counter() - start), times)
            results[f"cpu{concurrency}"] = (time.process_time() - cpu) / len(raws)
        resolver_cache.update(resolver._cache)

    run(main())
    results["rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if workers > 1:
        results["workers"] = scan_in_workers(engine, cfg, raws, workers, resolver_cache)
    return results


async def scan_all(engine, resolver: Resolver, raws: list[bytes], concurrency: int) -> list[float]:
    """Scan every message, ``concurrency`` at a time, each as sent by its own From
    domain from 192.0.2.1; the time of each scan."""
    times: list[float] = []
    gate = asyncio.Semaphore(concurrency)

    async def one(raw: bytes) -> None:
        async with gate:
            start = time.perf_counter()
            msg = parse(raw)
            ctx = CheckContext(message=msg, client=ClientInfo(addr="192.0.2.1", helo="mail.example.org"),
                               mail_from=msg.from_address, rcpt_tos=["user@example.net"],
                               profile="inbound", resolver=resolver)
            await engine.scan(ctx)
            times.append(time.perf_counter() - start)

    await asyncio.gather(*(one(raw) for raw in raws))
    return times


def scan_in_workers(engine, cfg, raws: list[bytes], workers: int, cache: dict) -> dict:
    """The eight-in-flight pass again, in ``workers`` forked processes (as
    ``proxy.workers`` runs the proxy: each its own engine copy and event loop,
    here with the answers the one-process passes cached), 8 / workers in flight
    in each, so 8 in all as for rspamd's workers. Returns msg/s over the wall
    time of all of them, their CPU per message and the largest worker RSS."""
    per_worker = max(1, 8 // workers)
    children = []
    start = time.perf_counter()
    for index in range(workers):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker: scan its share, report, leave without cleanup
            os.close(read_fd)
            code = 1
            try:
                report = _worker_pass(engine, cfg, raws[index::workers], per_worker, cache)
                with os.fdopen(write_fd, "w") as out:
                    json.dump(report, out)
                code = 0
            finally:
                os._exit(code)
        os.close(write_fd)
        children.append((pid, read_fd))
    reports = []
    for pid, read_fd in children:
        with os.fdopen(read_fd) as inp:
            data = inp.read()
        os.waitpid(pid, 0)
        if not data:
            raise RuntimeError(f"scan worker {pid} failed")
        reports.append(json.loads(data))
    wall = time.perf_counter() - start
    return {"rate": len(raws) / wall, "times": [t for r in reports for t in r["times"]],
            "cpu": sum(r["cpu"] for r in reports) / len(raws), "rss": max(r["rss"] for r in reports),
            "workers": workers}


def _worker_pass(engine, cfg, raws: list[bytes], concurrency: int, cache: dict) -> dict:
    times: list[float] = []

    async def main() -> None:
        resolver = Resolver(cfg.dns)
        resolver._cache.update(cache)  # the answers the parent fetched, as in its c=8 pass
        times.extend(await scan_all(engine, resolver, raws, concurrency))

    cpu = time.process_time()
    run(main())
    return {"times": times, "cpu": time.process_time() - cpu,
            "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# ---------------------------------------------------------------- external scanners


def drive(command: list[str], files: list[Path], concurrency: int) -> tuple[float, list[float]]:
    """Run ``command + [file]`` for every file, ``concurrency`` at a time."""
    times: list[float] = []

    async def main() -> float:
        gate = asyncio.Semaphore(concurrency)

        async def one(path: Path) -> None:
            async with gate:
                start = time.perf_counter()
                with open(path, "rb") as f:
                    proc = await asyncio.create_subprocess_exec(
                        *command, stdin=f, stdout=asyncio.subprocess.DEVNULL,
                        stderr=asyncio.subprocess.DEVNULL)
                    await asyncio.wait_for(proc.wait(), 120)
                times.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(one(p) for p in files))
        return len(files) / (time.perf_counter() - start)

    return asyncio.run(main()), times


def rspamc_batch(rspamc: list[str], files: list[Path], concurrency: int) -> tuple[float, list[float]]:
    """One rspamc process scanning every file, ``concurrency`` requests in flight
    (no process per message: rspamd's figure must not carry spawn costs)."""
    start = time.perf_counter()
    result = subprocess.run([*rspamc, "-n", str(concurrency), *map(str, files)],
                            capture_output=True, text=True, timeout=1800)
    rate = len(files) / (time.perf_counter() - start)
    times = [float(m) for m in re.findall(r"^Results for file: .* \(([0-9.]+) seconds\)$",
                                          result.stdout, re.M)]
    return rate, times


def bench_spamassassin(files: list[Path], tmp: Path, install: bool) -> dict:
    problem = apt_install(["spamassassin", "spamc"], install)
    if problem:
        return {"skipped": problem}
    port = free_port()
    home = tmp / "sa"
    home.mkdir()
    spamd = subprocess.Popen(
        ["spamd", "-L", "-i", "127.0.0.1", "-p", str(port), "-A", "127.0.0.1",
         "--max-children=8", "--min-children=8", "--min-spare=8", "--max-spare=8",
         "-u", "nobody", "--virtual-config-dir", str(home), "-x", "-s", "stderr"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: port_open(port) or spamd.poll() is not None, 120, "spamd")
        if spamd.poll() is not None:
            return {"skipped": "spamd exited at start"}
        drive(["spamc", "-p", str(port), "-c"], files[:16], 8)  # warm-up: rules compiled
        out: dict = {}
        for concurrency in (1, 8):
            out[concurrency] = drive(["spamc", "-p", str(port), "-c"], files, concurrency)
        out["rss"] = rss_mb(children(spamd.pid))
        return out
    finally:
        spamd.send_signal(signal.SIGTERM)
        spamd.wait(30)


def bench_rspamd(files: list[Path], tmp: Path, dns: DnsTestServer, install: bool) -> dict:
    problem = apt_install(["rspamd"], install)
    if problem:
        return {"skipped": problem}
    proc, port, _cport = start_rspamd(tmp / "rspamd", dns.nameserver)
    try:
        wait_until(lambda: port_open(port) or proc.poll() is not None, 120, "rspamd")
        if proc.poll() is not None:
            return {"skipped": "rspamd exited at start"}
        rspamc = ["rspamc", "-h", f"127.0.0.1:{port}", "-t", "30"]
        rspamc_batch(rspamc, files[:16], 8)  # warm-up
        out: dict = {}
        for concurrency in (1, 8):
            out[concurrency] = rspamc_batch(rspamc, files, concurrency)
        out["rss"] = rss_mb(children(proc.pid))
        return out
    finally:
        stop(proc, 30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--no-install", action="store_true")
    parser.add_argument("--skip-sa", action="store_true")
    parser.add_argument("--skip-rspamd", action="store_true")
    parser.add_argument("--spamassassin", action="store_true",
                        help="turn on smtpproxy's SpamAssassin rules check")
    parser.add_argument("--workers", type=int, default=1,
                        help="also scan the eight-in-flight pass in this many smtpproxy processes "
                             "(as proxy.workers; the rspamd here runs two workers)")
    args = parser.parse_args()
    files = corpus(args.messages)
    dns = DnsTestServer({}).start()  # every name: NXDOMAIN, answered locally
    results: dict[str, dict] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="scan-bench-") as tmp:
            results["smtpproxy"] = bench_smtpproxy(files, dns, args.spamassassin, args.workers)
            if not args.skip_sa:
                results["spamassassin"] = bench_spamassassin(files, Path(tmp), not args.no_install)
            if not args.skip_rspamd:
                results["rspamd"] = bench_rspamd(files, Path(tmp), dns, not args.no_install)
    finally:
        dns.stop()

    print(f"scan benchmark: {len(files)} messages of the SpamAssassin corpus, {os.cpu_count()} cores"
          + (", smtpproxy with the SpamAssassin rules" if args.spamassassin else ""))
    print(f"{'system':<14} {'msg/s c=1':>10} {'msg/s c=8':>10} {'p50 ms c=8':>11} {'p99 ms c=8':>11} {'RSS MB':>7}")
    for name, r in results.items():
        if "skipped" in r:
            print(f"{name:<14} skipped: {r['skipped']}")
            continue
        rate1, rate8, times8 = r[1][0], r[8][0], r[8][1]
        print(f"{name:<14} {rate1:>10.0f} {rate8:>10.0f} {pct(times8, .5) * 1000:>11.2f} "
              f"{pct(times8, .99) * 1000:>11.2f} {r['rss']:>7.0f}")
    ours = results["smtpproxy"]
    print(f"smtpproxy p50/p99 per scan, one at a time: {pct(ours[1][1], .5) * 1000:.2f} / "
          f"{pct(ours[1][1], .99) * 1000:.2f} ms")
    print(f"smtpproxy CPU per message: {ours['cpu1'] * 1000:.2f} ms the first time (DNS answers "
          f"fetched), {ours['cpu8'] * 1000:.2f} ms the second (cached); the test DNS server's "
          "thread included")
    multi = ours.get("workers")
    if multi:
        print(f"smtpproxy in {multi['workers']} worker processes, 8 in flight: {multi['rate']:.0f} msg/s, "
              f"p50/p99 {pct(multi['times'], .5) * 1000:.2f} / {pct(multi['times'], .99) * 1000:.2f} ms, "
              f"CPU {multi['cpu'] * 1000:.2f} ms per message, RSS {multi['rss']:.0f} MB per worker")
    for other in ("rspamd", "spamassassin"):
        r = results.get(other, {})
        if 1 in r:
            print(f"ratio smtpproxy / {other}: c=1 {ours[1][0] / r[1][0]:.2f}x, "
                  f"c=8 {ours[8][0] / r[8][0]:.2f}x"
                  + (f", c=8 in {multi['workers']} workers {multi['rate'] / r[8][0]:.2f}x" if multi else ""))
    print("(SpamAssassin through spamc, one process per message; rspamd through one rspamc "
          "with that many requests in flight; smtpproxy's engine in-process)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
