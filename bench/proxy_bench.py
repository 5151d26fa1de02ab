#!/usr/bin/env python3
"""Proxy throughput and latency against Postfix alone, measured in the same run.

    .venv/bin/python bench/proxy_bench.py [--messages 2000] [--rounds 3]

Two paths through one private Postfix instance (both end in the same queue
and are delivered to smtp-sink):

    direct:   smtp-source -> smtpd -> queue
    proxied:  smtp-source -> smtpd (smtpd_proxy_filter) -> smtpproxy -> smtpd -> queue

and with --smtpd-peer a third, the proxy's C peer: Postfix's own smtpd as the
pass-through, doing the proxy's job (receive, relay each command in lockstep,
XFORWARD included) with smtpd_proxy_filter pointing at the same re-injection
listener:

    smtpd:    smtp-source -> smtpd (smtpd_proxy_filter) -> smtpd (smtpd_proxy_filter) -> smtpd -> queue

Throughput comes from Postfix's own load generator smtp-source (5 KB messages,
concurrency 1 and 20); each figure is the best of --rounds alternating runs,
because this machine is noisy. Added latency is the difference of per-message
latency percentiles, measured with sequential SMTP transactions on each path.
Peak RSS is the proxy process's VmHWM at the end; the proxy's CPU per proxied
message is its user+system time over each proxied run (the machine's cores are
shared by Postfix and the proxy, so this is what the throughput ratio follows).
The paths run interleaved, one run each per round; with --smtpd-peer the
proxied/smtpd ratio of every round is printed too (the per-round spread is
the noise of this shared machine).
The proxy's scan hook is the no-op one unless --scan. Figures are printed as
ratios against the direct path.
"""

from __future__ import annotations

import argparse
import email.utils
import smtplib
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import MESSAGE_SIZE, OPEN_LOOPBACK_SMTPD, cpu_seconds, drain, pct, smtp_source  # noqa: E402
from tests.support.dns_server import DnsTestServer  # noqa: E402
from tests.support.net import free_port  # noqa: E402
from tests.support.pipeline import Pipeline  # noqa: E402


def latencies(port: int, count: int) -> list[float]:
    out = []
    for i in range(count):
        body = (f"From: bench@example.org\r\nTo: sink@example.net\r\nSubject: latency\r\n"
                f"Date: {email.utils.formatdate()}\r\nMessage-ID: <{i}.{time.time()}@example.org>\r\n"
                f"\r\n").encode() + (b"x" * 78 + b"\r\n") * (MESSAGE_SIZE // 80)
        start = time.perf_counter()
        with smtplib.SMTP("127.0.0.1", port, timeout=30, local_hostname="client.example.org") as smtp:
            smtp.sendmail("bench@example.org", ["sink@example.net"], body)
        out.append(time.perf_counter() - start)
    return out


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def add_smtpd_peer(p: Pipeline) -> int:
    """A Postfix smtpd doing the proxy's job, and a before-filter port that uses it;
    returns that port. Added before the pipeline starts."""
    peer_port, before_port = free_port(), free_port()
    p.postfix.add_service(f"127.0.0.1:{peer_port}", {
        "smtpd_proxy_filter": f"127.0.0.1:{p.reinject_port}",
        **OPEN_LOOPBACK_SMTPD,
        "smtpd_client_connection_count_limit": "0",
    })
    p.postfix.add_service(f"127.0.0.1:{before_port}", {
        "smtpd_proxy_filter": f"127.0.0.1:{peer_port}",
        "smtpd_client_connection_count_limit": "0",
    })
    return before_port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-samples", type=int, default=300)
    parser.add_argument("--unix-socket", action="store_true",
                        help="Postfix reaches the proxy over a UNIX-domain socket instead of TCP")
    parser.add_argument("--scan", action="store_true",
                        help="score every message (all checks on; DNS answered by a local server)")
    parser.add_argument("--speed-adjust", action="store_true",
                        help="measure the before-filter port with smtpd_proxy_options=speed_adjust")
    parser.add_argument("--smtpd-peer", action="store_true",
                        help="also measure Postfix's smtpd as the pass-through in place of the proxy")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="proxy-bench-") as tmp:
        dns = DnsTestServer({}).start() if args.scan else None
        dns_config = f'[dns]\nnameserver = "{dns.nameserver}"\n' if dns else ""
        p = Pipeline(Path(tmp), proxy_extra="max_sessions = 500", unix_socket=args.unix_socket,
                     scan=args.scan, extra_config=dns_config)
        paths = {"direct": p.direct_port,
                 "proxied": p.speed_adjust_port if args.speed_adjust else p.inbound_port}
        if args.smtpd_peer:
            paths["smtpd"] = add_smtpd_peer(p)
        p.start()
        try:
            # smtp-sink dumps every message; discard them instead for the benchmark.
            p.postfix.params["default_transport"] = "discard"
            p.postfix.params["relayhost"] = ""
            p.postfix.reload()
            time.sleep(1)
            smtp_source(p.direct_port, 200, 10)  # warm-up: start smtpd processes
            smtp_source(p.inbound_port, 200, 10)
            if args.smtpd_peer:
                smtp_source(paths["smtpd"], 200, 10)
            drain(p)
            results = {}
            peer_ratios: dict[int, list[float]] = {}  # proxied/smtpd, per round
            proxy_cpu: list[float] = []  # proxy CPU seconds per proxied message, per run
            for concurrency in (1, 20):
                n = args.messages if concurrency > 1 else max(200, args.messages // 4)
                best = dict.fromkeys(paths, 0.0)
                peer_ratios[concurrency] = []
                for _ in range(args.rounds):
                    rates = {}
                    for name, port in paths.items():
                        cpu = cpu_seconds(p.proxy.proc.pid)
                        rates[name] = smtp_source(port, n, concurrency)
                        if name == "proxied":
                            proxy_cpu.append((cpu_seconds(p.proxy.proc.pid) - cpu) / n)
                        best[name] = max(best[name], rates[name])
                        drain(p)
                    if "smtpd" in rates:
                        peer_ratios[concurrency].append(rates["proxied"] / rates["smtpd"])
                results[concurrency] = best
            lat_direct = latencies(p.direct_port, args.latency_samples)
            lat_proxy = latencies(paths["proxied"], args.latency_samples)
            rss = peak_rss_mb(p.proxy.proc.pid)
        finally:
            p.stop()
            if dns:
                dns.stop()

    print(f"proxy benchmark: {MESSAGE_SIZE // 1024} KB messages, best of {args.rounds} rounds, "
          f"Postfix -> proxy over {'a UNIX-domain socket' if args.unix_socket else 'TCP'}"
          f"{', speed_adjust' if args.speed_adjust else ''}{', scanning on' if args.scan else ''}")
    peer = args.smtpd_peer
    print(f"{'concurrency':>11} {'direct msg/s':>13} {'proxied msg/s':>14} {'ratio':>6}"
          + (f" {'smtpd-peer msg/s':>17} {'ratio':>6} {'proxied/smtpd':>14}" if peer else ""))
    for concurrency, best in results.items():
        ratio = best["proxied"] / best["direct"]
        line = f"{concurrency:>11} {best['direct']:>13.0f} {best['proxied']:>14.0f} {ratio:>6.2f}"
        if peer:
            line += (f" {best['smtpd']:>17.0f} {best['smtpd'] / best['direct']:>6.2f}"
                     f" {best['proxied'] / best['smtpd']:>14.2f}")
        print(line)
    if peer:
        for concurrency, ratios in peer_ratios.items():
            print(f"proxied/smtpd per round at concurrency {concurrency}: "
                  + " ".join(f"{r:.2f}" for r in ratios)
                  + f" (median {statistics.median(ratios):.2f})")
    d50, d99 = pct(lat_direct, 0.5) * 1000, pct(lat_direct, 0.99) * 1000
    p50, p99 = pct(lat_proxy, 0.5) * 1000, pct(lat_proxy, 0.99) * 1000
    print(f"latency per message (ms): direct p50 {d50:.2f} p99 {d99:.2f}; "
          f"proxied p50 {p50:.2f} p99 {p99:.2f}")
    print(f"added by the proxy (ms): p50 {p50 - d50:.2f} p99 {p99 - d99:.2f} "
          f"(mean {1000 * (statistics.mean(lat_proxy) - statistics.mean(lat_direct)):.2f})")
    print(f"proxy CPU per proxied message (ms): min {min(proxy_cpu) * 1000:.2f}, "
          f"median {statistics.median(proxy_cpu) * 1000:.2f} (user+system, from /proc)")
    print(f"proxy peak RSS: {rss:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
