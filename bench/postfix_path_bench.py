#!/usr/bin/env python3
"""Through Postfix, cold DNS: smtpproxy as smtpd_proxy_filter against rspamd as a milter.

Figures and how to read them: README, "Benchmarks".

    .venv/bin/python bench/postfix_path_bench.py [--messages 300] [--delay-ms 0,2]
                                                 [--concurrency 1,20] [--rounds 1] [--workers 1]
                                                 [--no-install]

The two ways of putting a scanner in front of one private Postfix, on the
same messages and the same DNS:

    proxy:   client -> smtpd (smtpd_proxy_filter, UNIX socket) -> smtpproxy -> smtpd -> queue
    milter:  client -> smtpd (smtpd_milters = unix:...) <-> rspamd proxy worker (milter, self_scan)
                                                           -> queue

Queued mail is discarded (transport ``discard``); what is measured is mail
handled while the client waits, so every message of a run must be answered
250 or a deliberate 5xx (a reject by score) on both paths.

The mail and the DNS are bench/realtraffic_bench.py's: corpus messages
re-addressed to a fresh domain each (SPF include chains, a DKIM key of its
own with the message really signed, DMARC, A/MX), a DNSBL and a URIBL zone,
every answer from a local authoritative server in a process of its own,
held back ``--delay-ms``. Every (delay, concurrency) run has its own set of
domains, so no sender is in any cache. With ``--rounds`` every setting runs
that many times (interleaved, each time with new domains) and the medians
are printed; the throughput ratio is the median of the rounds' ratios,
each of two runs close in time.

The client is this script: an asyncio SMTP client with ``--concurrency``
sessions in flight, one session per message. Postfix sees every connection
come from 127.0.0.1, so each session first sends XCLIENT (the front smtpd
lists 127.0.0.0/8 in ``smtpd_authorized_xclient_hosts``) with the message's
client address (198.18.0.0/15), name and HELO, then EHLO, MAIL FROM (the
re-addressed sender), RCPT, DATA. Postfix hands those attributes to the
proxy by XFORWARD and to the milter in its connect and HELO steps, so SPF,
the DNSBL and rspamd's loopback exemption see the message's own client.

smtpproxy runs as the daemon (``python -m smtpproxy.cli run``) from this
checkout with the shipped configuration but for: its nameserver (the local
server), the DNSBL zones (replaced by the two bench zones, as
realtraffic_bench does), ``proxy.workers`` (``--workers``), logging at
"error" (as rspamd's) and the inbound profile's greylist action off, because
rspamd without its greylist module accepts a message at greylist level. It
is restarted before every run so its resolver cache is empty.

rspamd (Debian's) is configured as realtraffic_bench configures it (network
modules off but for the bench RBL/URIBL; spf, dkim, dmarc, hfilter as
shipped), with its proxy worker in milter mode on a UNIX socket (over TCP
rspamd 3.4 stalls about 40 ms per message) scanning itself (``self_scan``), ``count``
= ``--workers``, and milter_headers adding X-Spamd-Result, X-Spam-Status,
X-Spam-Level and Authentication-Results as smtpproxy does. rspamd keeps no
DNS cache of its own; its SPF and DKIM caches never see a sender twice.

Figures per path and run: messages/s; CPU per message of the filter (the
process tree of smtpproxy, or rspamd's main process and every worker) and
of Postfix (its master, every child alive and every child already reaped:
the master's cutime/cstime); DNS queries per message, counted by the server;
the ratio smtpproxy/rspamd. The CPU per DNS lookup of smtpproxy comes two
ways. "bound": its CPU per message divided by its queries per message, an
upper bound since all the rest of its work is counted in too. "delta": each
proxy run is followed by a second pass of the same messages with the
answers in its cache; (cold CPU - warm CPU) / (cold queries - warm queries),
the cost of asking rather than finding, noisy on a shared host because it is
the difference of two measurements. With more than one worker process each
has a cache of its own, so the second pass still asks about half its
questions (printed) and the delta is less sure.

That both paths really scanned: for the measured runs, smtpproxy's count of
scans by action (its metrics endpoint) and rspamd's (its controller's /stat)
are printed against the messages sent. After them, not timed, the first
run's messages go through each path once more to a recipient that Postfix
delivers to smtp-sink; on what arrives, the result headers of each path are
counted and the symbols both systems name alike (SPF, DKIM, DMARC, list
hits) tallied from X-Spamd-Result, so a check that silently did not run
shows up as a difference. (rspamd's own symbol counters cannot serve: its
/counters leave out the proxy worker's scans, and a history row keeps only
the first 256 or so characters of the symbol names.)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    OPEN_LOOPBACK_SMTPD,
    apt_install,
    process_tree_cpu_seconds,
    start_rspamd,
    stop,
    wait_until_idle,
)
from bench.realtraffic_bench import (  # noqa: E402
    QUERY_KINDS,
    RSPAMD_RBL,
    SMTPPROXY_ZONES,
    TALLIED,
    DnsProcess,
    Sample,
    build_world,
    corpus,
    parse_list,
)
from smtpproxy.common import config  # noqa: E402
from tests.support.net import free_port, port_open  # noqa: E402
from tests.support.pipeline import ProxyProcess  # noqa: E402
from tests.support.postfix import PostfixInstance, SmtpSink, wait_until  # noqa: E402

RCPT = "user@example.net"  # discarded
CHECK_DOMAIN = "check.example.net"  # delivered to smtp-sink, to read the result headers
CHECK_RCPT = {"proxy": f"check-proxy@{CHECK_DOMAIN}", "milter": f"check-milter@{CHECK_DOMAIN}"}
RESULT_HEADERS = ("X-Spamd-Result", "X-Spam-Status", "Authentication-Results")
SESSION_TIMEOUT_S = 120
WARMUP_PER_RUN = 8


# ---------------------------------------------------------------- the client


class SmtpError(Exception):
    pass


async def read_reply(reader: asyncio.StreamReader) -> int:
    """The code of one (possibly multi-line) reply."""
    while True:
        line = await reader.readline()
        if len(line) < 4:
            raise SmtpError(f"connection closed or short reply {line!r}")
        if line[3:4] != b"-":
            return int(line[:3])


def payload(raw: bytes) -> bytes:
    """The DATA payload: dot-stuffed, ending in CRLF, then the lone dot."""
    body = re.sub(rb"(?m)^\.", b"..", raw)
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body + b".\r\n"


async def send_one(port: int, s: Sample, rcpt: str) -> str:
    """One session: "accepted", "rejected" (5xx), "deferred" (4xx) or "error"."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return "error"
    try:
        async def command(line: str | bytes, expected: int) -> None:
            writer.write(line if isinstance(line, bytes) else line.encode() + b"\r\n")
            code = await read_reply(reader)
            if code != expected:
                raise SmtpError(code)

        if await read_reply(reader) != 220:
            return "error"
        await command("EHLO bench-client.test", 250)
        # XCLIENT resets the session: a new greeting, then EHLO again.
        await command(f"XCLIENT ADDR={s.client_ip} NAME={s.helo} HELO={s.helo}", 220)
        await command(f"EHLO {s.helo}", 250)
        await command(f"MAIL FROM:<{s.mail_from}>", 250)
        await command(f"RCPT TO:<{rcpt}>", 250)
        await command("DATA", 354)
        await command(payload(s.raw), 250)
        writer.write(b"QUIT\r\n")
        await writer.drain()
        return "accepted"
    except SmtpError as e:
        code = e.args[0]
        if isinstance(code, int) and 400 <= code < 600:
            return "deferred" if code < 500 else "rejected"
        return "error"
    except (OSError, asyncio.IncompleteReadError, ValueError):
        return "error"
    finally:
        writer.close()


def send_all(port: int, samples: list[Sample], concurrency: int, rcpt: str = RCPT
             ) -> tuple[float, collections.Counter]:
    """Seconds taken and outcomes, with at most ``concurrency`` sessions open."""
    outcomes: collections.Counter[str] = collections.Counter()

    async def main() -> float:
        gate = asyncio.Semaphore(concurrency)

        async def one(s: Sample) -> None:
            async with gate:
                try:
                    outcomes[await asyncio.wait_for(send_one(port, s, rcpt), SESSION_TIMEOUT_S)] += 1
                except TimeoutError:
                    outcomes["error"] += 1

        start = time.perf_counter()
        await asyncio.gather(*(one(s) for s in samples))
        return time.perf_counter() - start

    return asyncio.run(main()), outcomes


# ---------------------------------------------------------------- the Postfix side


def toml_value(value) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def proxy_config(base: Path, socket: Path, reinject_port: int, metrics_port: int,
                 nameserver: str, workers: str) -> str:
    zones = "".join("\n[[scan.dnsbl.zones]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in zone.items())
                    for zone in SMTPPROXY_ZONES)
    return f"""
state_dir = "{base / 'state'}"
[log]
level = "error"
[proxy]
hostname = "filter.example.test"
max_sessions = 500
workers = {toml_value(workers if workers == "auto" else int(workers))}
metrics_listen = "127.0.0.1:{metrics_port}"
[[proxy.listeners]]
name = "inbound"
listen = "unix:{socket}"
profile = "inbound"
downstream = "127.0.0.1:{reinject_port}"
[scan]
enabled = true
[scan.profiles.inbound]
greylist = false
[dns]
nameserver = "{nameserver}"
{zones}"""


def rspamd_proxy_worker(socket: Path, workers: str) -> str:
    count = os.cpu_count() if workers == "auto" else int(workers)
    return f"""enabled = true;
bind_socket = "{socket} mode=0666";
milter = yes;
timeout = 120s;
count = {count};
upstream "local" {{ default = yes; self_scan = yes; }}
"""


RSPAMD_MILTER_HEADERS = 'use = ["x-spamd-result", "x-spam-status", "x-spam-level", "authentication-results"];\n'


@dataclass
class Setup:
    base: Path
    nameserver: str
    workers: str
    sink_port: int = field(default_factory=free_port)
    front: dict[str, int] = field(default_factory=lambda: {"proxy": free_port(), "milter": free_port()})
    reinject_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self.proxy_socket = self.base / "proxy" / "smtpproxy.sock"
        self.milter_socket = self.base / "milter" / "rspamd.sock"
        self.milter_socket.parent.mkdir(parents=True)
        self.sink = SmtpSink(self.base / "sink", self.sink_port)
        self.postfix = PostfixInstance(
            self.base / "postfix",
            relay_domains=f"example.net, {CHECK_DOMAIN}",
            transport_maps=(f"inline:{{ example.net=discard:, "
                            f"{CHECK_DOMAIN}=smtp:[127.0.0.1]:{self.sink_port} }}"),
            default_process_limit="500",
        )
        front = {"smtpd_authorized_xclient_hosts": "127.0.0.0/8",
                 "smtpd_client_connection_count_limit": "0"}
        self.postfix.add_service(f"127.0.0.1:{self.front['proxy']}",
                                 {**front, "smtpd_proxy_filter": f"unix:{self.proxy_socket}"})
        self.postfix.add_service(f"127.0.0.1:{self.front['milter']}", {
            **front,
            "smtpd_milters": f"unix:{self.milter_socket}",
            "milter_protocol": "6",
            "milter_default_action": "tempfail",  # a milter that fails must show, not pass mail
            "milter_mail_macros": "i {mail_addr} {client_addr} {client_name} {auth_authen}",
        })
        self.postfix.add_service(f"127.0.0.1:{self.reinject_port}", dict(OPEN_LOOPBACK_SMTPD))
        self.proxy = ProxyProcess(self.base / "proxy", proxy_config(
            self.base / "proxy", self.proxy_socket, self.reinject_port, self.metrics_port,
            self.nameserver, self.workers))
        self.rspamd = None

    def start(self) -> None:
        self.sink.start()
        self.postfix.start()
        for port in (*self.front.values(), self.reinject_port):
            wait_until(lambda port=port: port_open(port), 20, f"postfix port {port}")
        self.start_proxy()

    def start_proxy(self) -> None:
        self.proxy_socket.unlink(missing_ok=True)
        self.proxy.start(None)
        wait_until(lambda: self.proxy_socket.exists() or self.proxy.proc.poll() is not None, 60,
                   "smtpproxy's socket")
        if self.proxy.proc.poll() is not None:
            raise RuntimeError(f"smtpproxy exited: {self.proxy.log_text()[-2000:]}")
        wait_until(lambda: port_open(self.metrics_port), 20, "smtpproxy's metrics port")

    def restart_proxy(self) -> None:
        self.proxy.stop()
        self.start_proxy()

    def start_rspamd(self) -> tuple[int, float]:
        """rspamd's controller port, and the seconds it took to become idle."""
        self.rspamd, _port, cport = start_rspamd(
            self.base / "rspamd", self.nameserver,
            extra={"rbl.conf": "enabled = true;\n", "milter_headers.conf": RSPAMD_MILTER_HEADERS},
            override={"rbl.conf": RSPAMD_RBL,
                      "worker-proxy.inc": rspamd_proxy_worker(self.milter_socket, self.workers)})
        wait_until(lambda: (self.milter_socket.exists() and port_open(cport))
                   or self.rspamd.poll() is not None, 120, "rspamd")
        if self.rspamd.poll() is not None:
            raise RuntimeError("rspamd exited at start")
        return cport, wait_until_idle(self.rspamd.pid)

    def postfix_pid(self) -> int:
        return int((self.postfix.queue / "pid" / "master.pid").read_text().split()[0])

    def drain(self) -> None:
        wait_until(self.postfix.queue_is_empty, 600, "queue drained", interval=0.1)

    def stop(self) -> None:
        self.proxy.stop()
        if self.rspamd is not None:
            stop(self.rspamd, 30)
        self.postfix.stop()
        self.sink.stop()


# ---------------------------------------------------------------- counters of the filters


METRIC_LINE = re.compile(r'^smtpproxy_scan_actions_total\{action="([^"]*)"\} ([0-9.e+]+)$', re.M)


def proxy_counters(metrics_port: int) -> collections.Counter:
    """smtpproxy's scans by action ("action:NAME"), from its metrics endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return collections.Counter({f"action:{action}": int(float(value))
                                for action, value in METRIC_LINE.findall(text)})


def rspamd_counters(cport: int) -> collections.Counter:
    """rspamd's scanned messages ("scanned") and actions ("action:NAME"). Not
    its symbols: neither its /counters (the proxy worker's own scans are not
    in them) nor its history (a row keeps the first 256 or so characters of
    the symbol names) count them all."""
    out: collections.Counter[str] = collections.Counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{cport}/stat", timeout=10) as response:
        stat = json.load(response)
    out["scanned"] = stat.get("scanned", 0)
    for action, count in stat.get("actions", {}).items():
        out[f"action:{action}"] = count
    return out


def postfix_cpu_seconds(pid: int) -> float:
    """The Postfix master's tree, plus the CPU of children it has already reaped
    (smtpd processes exit after max_use sessions)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    reaped = (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
    return process_tree_cpu_seconds(pid) + reaped


# ---------------------------------------------------------------- one run


@dataclass
class PathRun:
    rate: float
    filter_ms: float
    postfix_ms: float
    queries: collections.Counter
    outcomes: collections.Counter
    counters: collections.Counter  # the filter's own, during the run


def measure(setup: Setup, dns: DnsProcess, path: str, samples: list[Sample], concurrency: int,
            filter_pid: int, counters) -> PathRun:
    setup.drain()
    postfix_pid = setup.postfix_pid()
    before_q, before_c = dns.counts()[0], counters()
    cpu_filter, cpu_postfix = process_tree_cpu_seconds(filter_pid), postfix_cpu_seconds(postfix_pid)
    elapsed, outcomes = send_all(setup.front[path], samples, concurrency)
    setup.drain()  # the queue's work is Postfix's share of these messages
    cpu_filter = process_tree_cpu_seconds(filter_pid) - cpu_filter
    cpu_postfix = postfix_cpu_seconds(postfix_pid) - cpu_postfix
    n = len(samples)
    return PathRun(n / elapsed, cpu_filter * 1000 / n, cpu_postfix * 1000 / n,
                   dns.counts()[0] - before_q, outcomes, counters() - before_c)


def check_headers(setup: Setup) -> dict[str, collections.Counter]:
    """Per path: delivered check messages, and how many carry each result header."""
    out = {path: collections.Counter() for path in CHECK_RCPT}
    for message in setup.sink.messages():
        path = next((p for p, rcpt in CHECK_RCPT.items() if any(rcpt in a for a in message.rcpt_args)), None)
        if path is None:
            continue
        head = message.message.split(b"\n\n", 1)[0].decode("latin-1")
        out[path]["delivered"] += 1
        for name in RESULT_HEADERS:
            if re.search(rf"^{name}:", head, re.M | re.I):
                out[path][name] += 1
        results = " ".join(re.findall(r"^Authentication-Results:(.*(?:\n[ \t].*)*)", head, re.M | re.I))
        for method in ("spf", "dkim", "dmarc"):
            if re.search(rf"\b{method}=\w+", results):
                out[path][f"A-R {method}="] += 1
        spamd = re.search(r"^X-Spamd-Result:(.*(?:\n[ \t].*)*)", head, re.M | re.I)
        for symbol in TALLIED:
            if spamd and re.search(rf"\b{symbol}\(", spamd.group(1)):
                out[path][symbol] += 1
    return out


# ---------------------------------------------------------------- main


@dataclass
class Outcome:
    """Everything one invocation measured, for ``report`` and the smoke test."""

    combos: list[tuple[float, int]]
    n: int  # messages per run
    # One PathRun per round, by (path, delay, concurrency), and smtpproxy's second pass by (delay, concurrency).
    results: dict[tuple[str, float, int], list[PathRun]] = field(
        default_factory=lambda: collections.defaultdict(list))
    warm: dict[tuple[float, int], list[PathRun]] = field(default_factory=lambda: collections.defaultdict(list))
    checked: dict[str, collections.Counter] = field(default_factory=dict)  # outcomes of the check pass
    headers: dict[str, collections.Counter] = field(default_factory=dict)  # what the sink got


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=300, help="messages per run (default 300)")
    parser.add_argument("--delay-ms", default="0,2", help="per-answer DNS delays, comma-separated (0,2)")
    parser.add_argument("--concurrency", default="1,20", help="sessions in flight, comma-separated (1,20)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds of every setting, each with domains of its own; medians are printed")
    parser.add_argument("--workers", default="1",
                        help="smtpproxy's proxy.workers and rspamd's proxy worker count (1, a count or auto)")
    parser.add_argument("--key-bits", type=int, default=1024, help="RSA size of each domain's DKIM key")
    parser.add_argument("--no-install", action="store_true", help="do not apt-get install rspamd")
    return parser.parse_args(argv)


def run_bench(args: argparse.Namespace, log=print) -> Outcome:
    combos = [(d, c) for d in parse_list(args.delay_ms) for c in parse_list(args.concurrency, int)]
    cfg = config.load(None, {})
    started = time.perf_counter()
    world = build_world(corpus(args.messages), len(combos) * args.rounds, args.key_bits,
                        cfg.scan.dmarc.public_suffix_list)
    log(f"prepared {sum(map(len, world.runs))} signed messages ({len(world.runs[1])} per run) and "
        f"{len(world.records)} DNS names in {time.perf_counter() - started:.0f} s")
    out = Outcome(combos, len(world.runs[1]))
    dns = DnsProcess(dict(world.records))
    del world.records
    try:
        with tempfile.TemporaryDirectory(prefix="postfix-path-bench-") as tmp:
            setup = Setup(Path(tmp), dns.nameserver, args.workers)
            try:
                setup.start()
                cport, waited = setup.start_rspamd()
                log(f"rspamd idle (Hyperscan databases compiled) after {waited:.0f} s")
                for path in ("proxy", "milter"):  # warm-up: start smtpd processes, load lazily
                    send_all(setup.front[path], world.runs[0], 4)
                setup.drain()
                wait_until_idle(setup.rspamd.pid, quiet_s=2)
                # Rounds interleaved (every setting once, then again) so that a busy
                # spell on this shared host does not fall on one setting only.
                settings = [combo for _ in range(args.rounds) for combo in combos]
                for (delay, concurrency), samples in zip(settings, world.runs[1:], strict=True):
                    dns.delay(delay / 1000)
                    setup.restart_proxy()  # an empty resolver cache
                    send_all(setup.front["proxy"], world.runs[0][:WARMUP_PER_RUN], 1)
                    pid = setup.proxy.proc.pid
                    counters = lambda: proxy_counters(setup.metrics_port)  # noqa: E731
                    ours = measure(setup, dns, "proxy", samples, concurrency, pid, counters)
                    # The same messages again, every answer now in the cache.
                    out.warm[delay, concurrency].append(
                        measure(setup, dns, "proxy", samples, concurrency, pid, counters))
                    theirs = measure(setup, dns, "milter", samples, concurrency, setup.rspamd.pid,
                                     lambda: rspamd_counters(cport))
                    out.results["proxy", delay, concurrency].append(ours)
                    out.results["milter", delay, concurrency].append(theirs)
                    log(f"  delay {delay:g} ms, concurrency {concurrency}: smtpproxy {ours.rate:.1f} msg/s, "
                        f"rspamd {theirs.rate:.1f} msg/s")
                # Not timed: the first run's messages once more through each path, now
                # delivered to smtp-sink, so the result headers show what each found.
                for path in ("proxy", "milter"):
                    out.checked[path] = send_all(setup.front[path], world.runs[1], 4, CHECK_RCPT[path])[1]
                setup.drain()
                out.headers = check_headers(setup)
            finally:
                setup.stop()
    finally:
        dns.stop()
    return out


def main() -> int:
    args = parse_args()
    problem = apt_install(["rspamd", "postfix"], not args.no_install)
    if problem:
        print(f"cannot run: {problem}")
        return 1
    out = run_bench(args, log=lambda text: print(text, flush=True))
    report(out, args)
    return 0


def combined(runs: list[PathRun]) -> PathRun:
    """The rounds of one setting: medians of the rates and CPU figures, sums of the
    counts (queries, outcomes, counters) over all its messages."""
    def summed(name: str) -> collections.Counter:
        return sum((getattr(r, name) for r in runs), collections.Counter())

    return PathRun(statistics.median(r.rate for r in runs), statistics.median(r.filter_ms for r in runs),
                   statistics.median(r.postfix_ms for r in runs), summed("queries"), summed("outcomes"),
                   summed("counters"))


def report(out: Outcome, args: argparse.Namespace) -> None:
    results = {key: combined(runs) for key, runs in out.results.items()}
    warm = {key: combined(runs) for key, runs in out.warm.items()}
    checked, headers, combos, rounds = out.checked, out.headers, out.combos, args.rounds
    n = out.n * rounds  # messages per setting, over all rounds
    load = os.getloadavg()
    print(f"\nthrough-Postfix benchmark: {out.n} messages per run, {rounds} round(s) (medians), each "
          f"message from a domain never seen before; {os.cpu_count()} cores, load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end; workers {args.workers}; "
          f"DKIM keys RSA {args.key_bits}")
    print(f"{'delay':>6} {'conc':>5} {'path':<16} {'msg/s':>7} {'filter CPU':>10} {'Postfix CPU':>11} "
          f"{'DNS q':>6}   outcomes")
    print(f"{'':>6} {'':>5} {'':<16} {'':>7} {'ms/msg':>10} {'ms/msg':>11} {'/msg':>6}")
    names = {"proxy": "smtpproxy", "milter": "rspamd milter"}
    for delay, concurrency in combos:
        rows = [(names[path], results[path, delay, concurrency]) for path in ("proxy", "milter")]
        rows.insert(1, ("smtpproxy, warm", warm[delay, concurrency]))
        for name, r in rows:
            queries = sum(r.queries.values()) / n
            outcomes = ", ".join(f"{k} {v}" for k, v in sorted(r.outcomes.items()))
            print(f"{delay:>4g}ms {concurrency:>5} {name:<16} {r.rate:>7.1f} {r.filter_ms:>10.2f} "
                  f"{r.postfix_ms:>11.2f} {queries:>6.2f}   {outcomes}")
    print("\nsmtpproxy / rspamd (messages/s), and smtpproxy's CPU per DNS lookup:")
    for delay, concurrency in combos:
        ours, cached = results["proxy", delay, concurrency], warm[delay, concurrency]
        theirs = results["milter", delay, concurrency]
        q_cold = sum(ours.queries.values()) / n
        q_warm = sum(cached.queries.values()) / n
        bound = ours.filter_ms / q_cold if q_cold else float("nan")
        delta = (ours.filter_ms - cached.filter_ms) / (q_cold - q_warm) if q_cold > q_warm else float("nan")
        # Each round's ratio pairs two runs close in time: their median is steadier
        # than the ratio of the two medians on a host whose load comes and goes.
        ratios = [a.rate / b.rate for a, b in zip(out.results["proxy", delay, concurrency],
                                                  out.results["milter", delay, concurrency], strict=True)]
        print(f"  delay {delay:g} ms, concurrency {concurrency}: {statistics.median(ratios):.2f}x messages/s"
              + (f" (median of the rounds {' '.join(f'{r:.2f}' for r in ratios)})" if rounds > 1 else "")
              + f", filter CPU {ours.filter_ms / theirs.filter_ms:.2f}x; CPU per lookup: bound {bound:.3f} ms, "
              f"delta {delta:.3f} ms")
    print("\nper-kind DNS queries per message (cold runs):")
    print(f"{'':>13} {'path':<16} " + " ".join(f"{k:>6}" for k in QUERY_KINDS))
    for delay, concurrency in combos:
        for path in ("proxy", "milter"):
            r = results[path, delay, concurrency]
            print(f"{delay:>4g}ms {concurrency:>6}  {names[path]:<16} "
                  + " ".join(f"{r.queries[k] / n:>6.2f}" for k in QUERY_KINDS))
    print(f"\ndid both scan? The first run's {out.n} messages once more, delivered to smtp-sink:")
    for path, counts in headers.items():
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(checked[path].items()))
        print(f"  {names[path]:<14} {outcomes}; with " +
              ", ".join(f"{k} {counts[k]}" for k in (*RESULT_HEADERS, "A-R spf=", "A-R dkim=", "A-R dmarc=")))
    print(f"  {'symbol (X-Spamd-Result)':<24} {'smtpproxy':>9} {'rspamd':>9}")
    for symbol in TALLIED:
        if headers["proxy"][symbol] or headers["milter"][symbol]:
            print(f"  {symbol:<24} {headers['proxy'][symbol]:>9} {headers['milter'][symbol]:>9}")
    print("counters of the filters over the measured runs (cold and warm passes for smtpproxy):")
    total = collections.defaultdict(collections.Counter)
    for (path, _d, _c), r in results.items():
        total[path] += r.counters
    for r in warm.values():
        total["proxy"] += r.counters
    for path in ("proxy", "milter"):
        actions = {k[7:]: v for k, v in total[path].items() if k.startswith("action:")}
        sent = n * len(combos) * (2 if path == "proxy" else 1)  # n: over all rounds
        scanned = total[path]["scanned"] if path == "milter" else sum(actions.values())
        print(f"  {names[path]:<14} sent {sent}, scanned {scanned}, actions {actions}")

if __name__ == "__main__":
    sys.exit(main())
