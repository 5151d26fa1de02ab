#!/usr/bin/env python3
"""Policy-protocol load generator: smtpproxy-policy vs postgrey vs policyd-rate-limit.

Every target gets the same stream: complete Postfix RCPT requests (all the
attributes Postfix 3.7 sends) for unique, realistic triplets, over
persistent connections, at concurrency 1 and 32. Each run has two phases:

  first   every triplet seen for the first time (greylisted: one store write)
  retry   the same triplets again after the (bench-shortened, 1 s) delay:
          the greylist passes, and then our rate-limit rule is evaluated too

Targets, measured in the same run on the same machine:
  ceiling              an asyncio server answering DUNNO without any work
  smtpproxy/sqlite     greylisting + one rate-limit rule, SQLite store
  smtpproxy/redis      the same on a redis-server started here
(smtpproxy runs as shipped: on uvloop when installed; the bench says which.)
  postgrey             Debian's postgrey (--delay=1)
  policyd-rate-limit   Debian's policyd-rate-limit, limiting by client IP, sqlite

postgrey and policyd-rate-limit are installed with apt-get if missing (and
skipped, saying so, if they cannot be). Ratios are against postgrey's figure
for the same concurrency and phase.

  python bench/policy_bench.py [--triplets 10000] [--concurrency 1,32] [--no-install]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import stop  # noqa: E402
from tests.support.net import free_port  # noqa: E402
from tests.support.redis import start_redis  # noqa: E402

PHASE_TIMEOUT_S = 300.0
START_TIMEOUT_S = 20.0


# ---------------------------------------------------------------- the stream


def make_requests(n: int, seed: int) -> list[bytes]:
    """n unique triplets as Postfix would send them at RCPT."""
    rng = random.Random(seed)
    firsts = ["anna", "bob", "chen", "dmitri", "eva", "farid", "gita", "hugo", "ines", "jon"]
    senders_kind = ["{f}.{l}@{d}", "newsletter+{n}@{d}", "bounce-{n}-{m}@mail.{d}", "{f}@{d}",
                    "prvs={h}={f}@{d}", "noreply@{d}"]
    out = []
    for i in range(n):
        ip = f"{rng.randrange(11, 223)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        dom = f"{rng.choice(['shop', 'news', 'corp', 'mail', 'bank'])}{rng.randrange(100000)}.example"
        sender = rng.choice(senders_kind).format(
            f=rng.choice(firsts), l=rng.choice(firsts), d=dom, n=rng.randrange(10**6),
            m=rng.randrange(10**4), h=f"{rng.randrange(16**10):010x}",
        )
        recipient = f"{rng.choice(firsts)}.{i}@ourdomain.example"
        name = f"mail{rng.randrange(1000)}.{dom}" if rng.random() < 0.7 else "unknown"
        attrs = [
            ("request", "smtpd_access_policy"), ("protocol_state", "RCPT"),
            ("protocol_name", "ESMTP"), ("helo_name", name if name != "unknown" else f"[{ip}]"),
            ("queue_id", ""), ("sender", sender), ("recipient", recipient),
            ("recipient_count", "0"), ("client_address", ip), ("client_name", name),
            ("reverse_client_name", name), ("instance", f"{i:x}.{seed:x}.0"),
            ("sasl_method", ""), ("sasl_username", ""), ("sasl_sender", ""), ("size", "0"),
            ("ccert_subject", ""), ("ccert_issuer", ""), ("ccert_fingerprint", ""),
            ("ccert_pubkey_fingerprint", ""), ("encryption_protocol", "TLSv1.3"),
            ("encryption_cipher", "TLS_AES_256_GCM_SHA384"), ("encryption_keysize", "256"),
            ("etrn_domain", ""), ("stress", ""), ("client_port", str(rng.randrange(1024, 65535))),
            ("policy_context", ""), ("server_address", "192.0.2.25"), ("server_port", "25"),
            ("compatibility_level", "3.6"), ("mail_version", "3.7.11"),
        ]
        out.append("".join(f"{k}={v}\n" for k, v in attrs).encode() + b"\n")
    return out


# ---------------------------------------------------------------- the generator


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future | None = None
        self.buf = b""

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.buf.endswith(b"\n\n") and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.buf)
            self.buf = b""

    def connection_lost(self, exc) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("server closed the connection"))


async def drive(port: int, requests: list[bytes], concurrency: int) -> dict:
    loop = asyncio.get_running_loop()
    conns = []
    for _ in range(concurrency):
        _, proto = await loop.create_connection(_Conn, "127.0.0.1", port)
        conns.append(proto)
    latencies: list[float] = []
    actions: dict[str, int] = {}
    next_index = 0

    async def worker(conn: _Conn) -> None:
        nonlocal next_index
        while next_index < len(requests):
            req = requests[next_index]
            next_index += 1
            conn.waiter = loop.create_future()
            t0 = time.perf_counter()
            conn.transport.write(req)
            reply = await conn.waiter
            latencies.append(time.perf_counter() - t0)
            word = reply[7:].split(b" ", 1)[0].split(b"\n", 1)[0].decode().upper()
            actions[word] = actions.get(word, 0) + 1

    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker(c) for c in conns)), PHASE_TIMEOUT_S)
    elapsed = time.perf_counter() - t0
    for c in conns:
        c.transport.close()
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "actions": actions,
    }


# ---------------------------------------------------------------- targets


def wait_port(port: int, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} not listening on {port}")


NULL_SERVER = r"""
import asyncio, sys
class P(asyncio.Protocol):
    def connection_made(self, t): self.t = t; self.b = b""
    def data_received(self, d):
        self.b += d
        while b"\n\n" in self.b:
            _, _, self.b = self.b.partition(b"\n\n")
            self.t.write(b"action=DUNNO\n\n")
async def main():
    s = await asyncio.get_running_loop().create_server(P, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    await s.serve_forever()
asyncio.run(main())
"""


def start_null(work: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", NULL_SERVER, str(port)])
    wait_port(port, proc, "null server")
    return proc, port


def start_ours(work: Path, store_url: str, name: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    d = work / f"ours-{name}"
    d.mkdir()
    cfg = d / "policy.toml"
    cfg.write_text(f"""
state_dir = "{d}"
[log]
level = "warning"
[store]
url = "{store_url}"
[policy]
listen = "127.0.0.1:{port}"
hostname = "bench.example"
[policy.greylist]
delay_s = 1.0
trusted_networks = []
whitelist_client_maps = ["{ROOT}/conf/policy/whitelist_clients"]
[[policy.rate_limits]]
name = "inbound_client"
key = ["client_address"]
limits = ["1000/1m", "100000/1d"]
count = "recipients"
action = "DEFER"
""")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("STATE_DIRECTORY", None)
    proc = subprocess.Popen([sys.executable, "-m", "policy.cli", "run", "-c", str(cfg)], cwd=ROOT,
                            env=env, stderr=open(d / "log", "wb"))
    wait_port(port, proc, name)
    return proc, port


def start_postgrey(work: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    d = work / "postgrey"
    d.mkdir()
    shutil.chown(d, "postgrey")
    os.chmod(work, 0o755)
    proc = subprocess.Popen(
        ["postgrey", f"--inet=127.0.0.1:{port}", f"--dbdir={d}", "--delay=1",
         f"--pidfile={d}/pid", "--user=postgrey", "--group=postgrey"],
        stdout=subprocess.DEVNULL, stderr=open(work / "postgrey.log", "wb"),
    )
    wait_port(port, proc, "postgrey")
    return proc, port


def start_rate_limit(work: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    d = work / "prl"
    d.mkdir()
    shutil.chown(d, "policyd-rate-limit")
    cfg = d / "config.yaml"
    cfg.write_text(f"""
debug: False
user: "policyd-rate-limit"
group: "policyd-rate-limit"
pidfile: "{d}/pid"
sqlite_config:
    database: "{d}/db.sqlite3"
backend: 0
SOCKET: ["127.0.0.1", {port}]
limits:
    - [1000, 60]
    - [100000, 86400]
limits_by_id: {{}}
limit_by_sasl: True
limit_by_sender: False
limit_by_ip: True
limited_networks: ["0.0.0.0/0"]
success_action: "dunno"
fail_action: "defer_if_permit Rate limit reach, retry later"
db_error_action: "dunno"
report: False
""")
    proc = subprocess.Popen(["policyd-rate-limit", "--file", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=open(work / "prl.log", "wb"))
    wait_port(port, proc, "policyd-rate-limit")
    return proc, port


def ensure_debs(names: list[str]) -> set[str]:
    """Install missing packages; return the ones available afterwards."""
    missing = [n for n in names if subprocess.run(["dpkg", "-s", n], capture_output=True).returncode]
    if missing:
        print(f"installing {' '.join(missing)} ...", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", "-q", *missing], env=env, capture_output=True,
                       timeout=600)
    return {n for n in names if not subprocess.run(["dpkg", "-s", n], capture_output=True).returncode}


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--triplets", type=int, default=10000)
    ap.add_argument("--concurrency", default="1,32")
    ap.add_argument("--no-install", action="store_true")
    ap.add_argument("--only", help="comma-separated target names")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    available = {"postgrey", "policyd-rate-limit", "redis-server"}
    if not args.no_install:
        available = ensure_debs(sorted(available))
    work = Path(tempfile.mkdtemp(prefix="policy-bench-"))
    os.chmod(work, 0o755)
    redis = None
    targets: list[tuple[str, callable]] = [("ceiling", lambda: start_null(work))]
    targets.append(("smtpproxy/sqlite", lambda: start_ours(work, f"sqlite://{work}/bench.db", "sqlite")))
    if "redis-server" in available or shutil.which("redis-server"):
        redis = start_redis(str(work / "redis"))
        targets.append(("smtpproxy/redis", lambda: start_ours(work, redis.url, "redis")))
    else:
        print("redis-server not available: smtpproxy/redis skipped")
    if "postgrey" in available:
        targets.append(("postgrey", lambda: start_postgrey(work)))
    else:
        print("postgrey not installable: skipped (no ratios)")
    if "policyd-rate-limit" in available:
        targets.append(("policyd-rate-limit", lambda: start_rate_limit(work)))
    else:
        print("policyd-rate-limit not installable: skipped")
    if args.only:
        wanted = set(args.only.split(","))
        targets = [t for t in targets if t[0] in wanted]

    try:
        import uvloop  # noqa: F401
        loop_name = "uvloop"
    except ImportError:
        loop_name = "asyncio"
    print(f"{args.triplets} unique triplets per run, persistent connections, "
          f"{os.cpu_count()} CPUs, generator and servers on the same host; "
          f"smtpproxy-policy on {loop_name}", flush=True)
    results: dict[tuple[str, int, str], dict] = {}
    try:
        for name, start in targets:
            proc, port = start()
            try:
                asyncio.run(drive(port, make_requests(200, 999), 4))  # warm-up
                for conc in levels:
                    reqs = make_requests(args.triplets, seed=1000 + conc)
                    first_started = time.monotonic()
                    results[(name, conc, "first")] = asyncio.run(drive(port, reqs, conc))
                    # The retry comes after the (1 s) greylist delay.
                    time.sleep(max(0.0, 1.2 - (time.monotonic() - first_started)))
                    results[(name, conc, "retry")] = asyncio.run(drive(port, reqs, conc))
                    for phase in ("first", "retry"):
                        r = results[(name, conc, phase)]
                        print(f"  {name:24s} c={conc:<3d} {phase:5s} {r['rps']:8.0f} req/s  "
                              f"p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  {r['actions']}",
                              flush=True)
            finally:
                stop(proc)
    finally:
        if redis is not None:
            redis.stop()

    print()
    print(f"{'target':24s} {'conc':>4s} {'phase':6s} {'req/s':>8s} {'p50 ms':>7s} {'p99 ms':>7s} "
          f"{'vs postgrey':>11s}")
    for (name, conc, phase), r in results.items():
        base = results.get(("postgrey", conc, phase))
        ratio = f"{r['rps'] / base['rps']:10.2f}x" if base else "          -"
        print(f"{name:24s} {conc:4d} {phase:6s} {r['rps']:8.0f} {r['p50_ms']:7.2f} "
              f"{r['p99_ms']:7.2f} {ratio}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
