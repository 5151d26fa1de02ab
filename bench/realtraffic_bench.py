#!/usr/bin/env python3
"""Cold-DNS scan benchmark: smtpproxy vs rspamd on re-addressed corpus mail, every network check on.

    .venv/bin/python bench/realtraffic_bench.py [--messages 500] [--delay-ms 0,2] [--concurrency 1,8]
                                                [--key-bits 1024] [--skip-rspamd] [--no-install]

What the mail looks like. ``--messages`` files of the SpamAssassin public
corpus (spam and ham alike, labels from LABELS.tsv) are scanned once per
(delay, in-flight) run, and every run re-addresses them to domains nobody has
seen before, so no cache (smtpproxy's resolver, rspamd's SPF and DKIM key
caches) holds an answer for a sender. For each message:

- the mbox "From " line, From, Return-Path and any DKIM/DomainKey/ARC
  signature are removed; ``From: local@D`` (the old local part) and
  ``Return-Path: <local@D>`` are written, the envelope sender is the same
  address, HELO and the client's name are ``mail.D``, the recipient
  ``user@example.net``;
- the message (CRLF) is DKIM-signed (dkimpy, relaxed/relaxed, selector
  ``bench``) with a key of its own domain (``--key-bits`` RSA, one key per
  domain);
- the client address is a fresh one of 198.18.0.0/15 (the benchmarking range).

What the local DNS server (tests/support/dns_server.py, authoritative, in a
process of its own so its CPU is counted for neither system; every answer
held back ``--delay-ms``) serves for each domain D:

- SPF ``v=spf1 mx include:_spf.D -all``, an include chain of 2 or 3 levels
  (alternately) whose last level names the client's address; for one spam
  in four the chain does not name it (SPF fail);
- ``D MX 10 mx.D``, A records of D, mx.D and mail.D (the client's address);
- the DKIM key ``bench._domainkey.D``;
- DMARC ``_dmarc.D``: ``p=reject`` for every other domain, ``p=none`` else;
- DNSBL ``rbl.bench.test``: the client address of one spam in three listed
  (127.0.0.2);
- URIBL ``uribl.bench.test``: for every other spam the registrable domains
  of its URLs listed (127.0.0.2, bit 2); the real URL domains of the corpus
  are otherwise unknown (NXDOMAIN), and they repeat between messages as in
  real traffic.

Anything else is NXDOMAIN; nothing leaves the machine.

smtpproxy: the shipped engine (every check of the default configuration;
Bayes without a store does nothing), in this process, scanning with
XFORWARD-like client data (address, name, HELO) and the envelope above;
dns.nameserver is the local server and a new Resolver (empty cache) starts
each run. Its DNSBL zones are replaced by the two local lists: the client
address against rbl.bench.test; the registrable domains of the envelope
sender, the From address and the URLs against uribl.bench.test. It asks:
SPF (TXT of D and the include chain, MX of D and A of mx.D for "mx"), the
DKIM key, DMARC, the DNSBL, the URIBL.

rspamd (Debian's, 2 normal workers): network modules off as in
bench/common.py except rbl, whose rules are replaced (override.d/rbl.conf)
by the two local lists: RBL_BENCH asks about the client address ("from"
check), URIBL_BENCH about URL domains (registrable part, no IP URLs) and,
through selectors, the envelope sender's and From's registrable domains;
monitoring and the URL whitelist are off. spf, dkim, dmarc and hfilter run
as shipped. Messages go to /checkv2 over HTTP with the per-message IP, Helo,
Hostname, From and Rcpt headers rspamc sends (one rspamc invocation would
give every file the same envelope), at most N requests in flight on
kept-alive connections. Besides what smtpproxy asks, rspamd asks (seen with
--compare-questions): A and AAAA of mail.D and of D (hfilter: HELO, client
name and sender domain resolve?), AAAA of mx.D (its SPF "mx" asks both
families where smtpproxy asks A for an IPv4 client). Their URL extractors
differ on a few names per hundred messages: rspamd also asks about names it
finds in plain text without a scheme (some glued to the next word), smtpproxy
about hosts rspamd decodes or rejects first (percent-encoded user@host taken
whole, words of scripts such as "selectedindex].value").

CPU: smtpproxy's is this process's CPU time during its run (nothing else
runs in it then); rspamd's is the CPU time of its main process and every
worker (/proc/PID/stat) before and after its run; the DNS server's is in
neither. DNS queries are counted by the server per run, by kind, so each
system's queries per message are its own. Per run both systems scan the
same messages (smtpproxy first, then rspamd). Symbols both report (SPF,
DKIM, DMARC, list hits) are tallied, so a check that silently did not run
shows up as a difference.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import email.utils
import ipaddress
import multiprocessing
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dkim  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

from bench.common import (  # noqa: E402
    apt_install,
    cpu_seconds,
    process_tree_cpu_seconds,
    start_rspamd,
    stop,
    wait_until_idle,
)
from smtpproxy.common import config  # noqa: E402
from smtpproxy.common.dns import Resolver  # noqa: E402
from smtpproxy.common.runtime import run  # noqa: E402
from smtpproxy.scan.checks.base import CheckContext  # noqa: E402
from smtpproxy.scan.checks.dnsbl import public_suffix_list  # noqa: E402
from smtpproxy.scan.hook import build_engine  # noqa: E402
from smtpproxy.scan.message import parse  # noqa: E402
from smtpproxy.transaction import ClientInfo  # noqa: E402
from tests.support.dns_server import DnsTestServer  # noqa: E402
from tests.support.net import port_open  # noqa: E402
from tests.support.postfix import wait_until  # noqa: E402

CORPUS_DIR = ROOT.parent / "shared" / "corpora" / "spam-ham"
RBL_ZONE = "rbl.bench.test"
URIBL_ZONE = "uribl.bench.test"
SELECTOR = "bench"
CLIENT_NET = ipaddress.ip_network("198.18.0.0/15")
RCPT = "user@example.net"
SENDER_DOMAIN = re.compile(r"\b(?:w|r\d+)-\d+\.com\.$")
WARMUP_MESSAGES = 24
# Symbols both systems name alike: the cross-check that each really ran its checks.
TALLIED = ("R_SPF_ALLOW", "R_SPF_FAIL", "R_SPF_SOFTFAIL", "R_SPF_DNSFAIL", "R_DKIM_ALLOW",
           "R_DKIM_REJECT", "R_DKIM_TEMPFAIL", "R_DKIM_PERMFAIL", "DMARC_POLICY_ALLOW",
           "DMARC_POLICY_REJECT", "RBL_BENCH", "URIBL_BENCH_BLACK")
QUERY_KINDS = ("spf", "dkim", "dmarc", "a/mx", "dnsbl", "uribl", "other")

SMTPPROXY_ZONES = [
    {"zone": RBL_ZONE, "kind": "ip", "returncodes": {"RBL_BENCH": ["127.0.0.2"]},
     "scores": {"RBL_BENCH": 4.0}},
    {"zone": URIBL_ZONE, "kind": "domain", "bits": {"URIBL_BENCH_BLACK": 2},
     "scores": {"URIBL_BENCH_BLACK": 4.0}},
]
RSPAMD_RBL = f"""rbls {{
  RBL_BENCH {{
    rbl = "{RBL_ZONE}";
    checks = ["from"];
    ipv4 = true;
    ipv6 = false;
    ignore_defaults = true;
    ignore_whitelist = true;
    disable_monitoring = true;
    returncodes {{ RBL_BENCH = "127.0.0.2"; }}
  }}
  URIBL_BENCH {{
    rbl = "{URIBL_ZONE}";
    checks = ["urls"];
    selector = {{
      envfrom = "from('smtp'):domain.get_tld";
      mimefrom = "from('mime'):domain.get_tld";
    }}
    no_ip = true;
    ignore_defaults = true;
    ignore_whitelist = true;
    disable_monitoring = true;
    returnbits {{ URIBL_BENCH_BLACK = 2; }}
  }}
}}
url_whitelist = [];
"""


# ---------------------------------------------------------------- the mail


@dataclass
class Sample:
    """One re-addressed, signed message and its envelope."""

    raw: bytes
    spam: bool
    client_ip: str
    mail_from: str
    helo: str


def corpus(n: int) -> list[tuple[Path, bool]]:
    """``n`` files spread evenly over the labelled corpus, with "is spam"."""
    rows = []
    for line in (CORPUS_DIR / "LABELS.tsv").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        path, label = line.split("\t")[:2]
        rows.append((CORPUS_DIR / path, label == "spam"))
    step = max(1, len(rows) // n)
    return rows[::step][:n]


DROPPED_FIELDS = {b"from", b"return-path", b"dkim-signature", b"domainkey-signature",
                  b"arc-seal", b"arc-message-signature", b"arc-authentication-results"}
LOCAL_PART = re.compile(rb"^[A-Za-z0-9._+-]{1,40}$")


def readdress(raw: bytes, domain: str) -> tuple[bytes, str]:
    """The message from ``local@domain`` (CRLF line ends), and that address."""
    raw = raw.replace(b"\r\n", b"\n")
    if raw.startswith(b"From "):  # the mbox separator
        raw = raw.split(b"\n", 1)[1] if b"\n" in raw else b""
    head, _, body = raw.partition(b"\n\n")
    fields: list[list[bytes]] = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    local = b"sender"
    kept: list[bytes] = []
    from_at = None
    for lines in fields:
        name = lines[0].split(b":", 1)[0].strip().lower()
        if name == b"from" and from_at is None:
            old = email.utils.parseaddr(b" ".join(lines).split(b":", 1)[1].decode("latin-1"))[1]
            candidate = old.rpartition("@")[0].encode("latin-1")
            if LOCAL_PART.match(candidate):
                local = candidate
            from_at = len(kept)
        if name not in DROPPED_FIELDS:
            kept.extend(lines)
    address = f"{local.decode()}@{domain}"
    kept.insert(from_at if from_at is not None else len(kept), f"From: {address}".encode())
    kept.insert(0, f"Return-Path: <{address}>".encode())
    message = b"\r\n".join(kept) + b"\r\n\r\n" + body.replace(b"\n", b"\r\n")
    return message, address


def new_key(bits: int) -> tuple[bytes, str]:
    """(private key PEM, the p= value of its DKIM record)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, base64.b64encode(public).decode()


@dataclass
class World:
    """Every run's messages and the DNS data that describes their senders."""

    runs: list[list[Sample]] = field(default_factory=list)
    records: dict[str, list[tuple]] = field(default_factory=lambda: collections.defaultdict(list))
    next_ip: int = 1

    def client_ip(self) -> str:
        ip = CLIENT_NET.network_address + self.next_ip
        self.next_ip += 1
        return str(ip)

    def sender(self, tag: str, index: int, raw: bytes, spam: bool, key_bits: int,
               url_domains: list[str]) -> Sample | None:
        """Records for a fresh domain; the message re-addressed to it and signed."""
        domain = f"{tag}-{index}.com"  # SENDER_DOMAIN
        ip = self.client_ip()
        message, address = readdress(raw, domain)
        pem, public = new_key(key_bits)
        try:
            signature = dkim.sign(message, SELECTOR.encode(), domain.encode(), pem,
                                  canonicalize=(b"relaxed", b"relaxed"))
        except dkim.DKIMException:
            return None
        r = self.records
        authorized = not (spam and index % 4 == 1)
        last = f"v=spf1 ip4:{ip} -all" if authorized else "v=spf1 ip4:192.0.2.0/24 -all"
        r[domain] += [("TXT", f"v=spf1 mx include:_spf.{domain} -all"), ("MX", f"10 mx.{domain}."),
                      ("A", "198.51.100.10")]
        if index % 2:  # three levels
            r[f"_spf.{domain}"].append(("TXT", f"v=spf1 ip4:203.0.113.0/24 include:_spf2.{domain} -all"))
            r[f"_spf2.{domain}"].append(("TXT", last))
        else:
            r[f"_spf.{domain}"].append(("TXT", last))
        r[f"mx.{domain}"].append(("A", "198.51.100.25"))
        r[f"mail.{domain}"].append(("A", ip))
        r[f"{SELECTOR}._domainkey.{domain}"].append(("TXT", f"v=DKIM1; k=rsa; p={public}"))
        policy = "reject" if index % 2 == 0 else "none"
        r[f"_dmarc.{domain}"].append(("TXT", f"v=DMARC1; p={policy}; rua=mailto:dmarc@{domain}"))
        if spam and index % 3 == 0:
            reversed_ip = ".".join(reversed(ip.split(".")))
            r[f"{reversed_ip}.{RBL_ZONE}"] = [("A", "127.0.0.2")]
        if spam and index % 2 == 0:
            for listed in url_domains:
                r[f"{listed}.{URIBL_ZONE}"] = [("A", "127.0.0.2")]
        return Sample(signature + message, spam, ip, address, f"mail.{domain}")


def build_world(files: list[tuple[Path, bool]], run_count: int, key_bits: int, psl_path: str) -> World:
    world = World()
    psl = public_suffix_list(psl_path)
    raws = []
    for path, spam in files:
        raw = path.read_bytes()
        domains = sorted({psl.organizational_domain(d.lower()) for d in parse(raw).url_domains
                          if d and not d[0].isdigit()})
        raws.append((raw, spam, domains))
    for tag in ["w", *(f"r{i}" for i in range(run_count))]:
        chosen = raws[:WARMUP_MESSAGES] if tag == "w" else raws
        samples = [s for i, (raw, spam, domains) in enumerate(chosen)
                   if (s := world.sender(tag, i, raw, spam, key_bits, domains)) is not None]
        world.runs.append(samples)
    return world


# ---------------------------------------------------------------- the DNS server process


def query_kind(name: str, rtype: str) -> str:
    if name.endswith(f".{RBL_ZONE}."):
        return "dnsbl"
    if name.endswith(f".{URIBL_ZONE}."):
        return "uribl"
    if "._domainkey." in name:
        return "dkim"
    if name.startswith("_dmarc."):
        return "dmarc"
    if rtype in ("TXT", "SPF"):
        return "spf"
    if rtype in ("A", "AAAA", "MX") and SENDER_DOMAIN.search(name):
        return "a/mx"
    return "other"  # e.g. rspamd's map server, which it asks about now and then


class CountingDnsServer(DnsTestServer):
    """Counts the questions by kind; a few of the "other" ones are kept to show."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.kinds: collections.Counter[str] = collections.Counter()
        self.other_names: collections.Counter[str] = collections.Counter()

    def answer(self, wire, transport):
        before = self.query_count
        response = super().answer(wire, transport)
        if self.query_count != before:
            name, rtype = self.queries[-1][:2]
            kind = query_kind(name, rtype)
            self.kinds[kind] += 1
            if kind == "other" and (len(self.other_names) < 50 or name in self.other_names):
                self.other_names[f"{name} {rtype}"] += 1
        return response


def serve_dns(records: dict, conn) -> None:
    """The child process: serve, then answer the parent's commands until "stop"."""
    server = CountingDnsServer(records).start()
    conn.send(server.nameserver)
    while True:
        command, argument = conn.recv()
        if command == "delay":
            server.delay_s = argument
            conn.send(None)
        elif command == "counts":
            conn.send((dict(server.kinds), dict(server.other_names)))
        elif command == "questions":  # the last ones asked (bounded), then forgotten
            conn.send(list(server.queries))
            server.queries.clear()
        else:
            break
    server.stop()
    conn.send(None)


class DnsProcess:
    def __init__(self, records: dict):
        # fork: the records are not pickled, and no thread runs yet in this process.
        ctx = multiprocessing.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=serve_dns, args=(records, child), daemon=True)
        self.proc.start()
        self.nameserver = self.conn.recv()

    def delay(self, seconds: float) -> None:
        self.conn.send(("delay", seconds))
        self.conn.recv()

    def counts(self) -> tuple[collections.Counter, dict]:
        self.conn.send(("counts", None))
        kinds, others = self.conn.recv()
        return collections.Counter(kinds), others

    def questions(self) -> set[tuple[str, str]]:
        self.conn.send(("questions", None))
        return {(name, rtype) for name, rtype, _transport in self.conn.recv()}

    def stop(self) -> None:
        self.conn.send(("stop", None))
        if self.conn.poll(10):
            self.conn.recv()
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


# ---------------------------------------------------------------- the two scanners


@dataclass
class RunResult:
    rate: float
    cpu_ms: float
    queries: collections.Counter
    symbols: collections.Counter
    # Share of one core the DNS server used meanwhile: near 100% it, not the
    # scanner, would set the pace.
    dns_busy: float = 0.0
    failures: int = 0


def scan_smtpproxy(engine, cfg, samples: list[Sample], concurrency: int) -> tuple[float, float, collections.Counter]:
    symbols: collections.Counter[str] = collections.Counter()
    out: list[float] = []

    async def main() -> None:
        resolver = Resolver(cfg.dns)  # empty cache: every sender is new to it
        gate = asyncio.Semaphore(concurrency)

        async def one(s: Sample) -> None:
            async with gate:
                msg = parse(s.raw)
                client = ClientInfo(name=s.helo, addr=s.client_ip, helo=s.helo)
                ctx = CheckContext(message=msg, client=client, mail_from=s.mail_from,
                                   rcpt_tos=[RCPT], profile="inbound", resolver=resolver)
                result = await engine.scan(ctx)
                symbols.update(name for name in result.symbols if name in TALLIED)

        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(one(s) for s in samples))
        out.extend((time.perf_counter() - start, time.process_time() - cpu))

    run(main())
    elapsed, cpu = out
    return len(samples) / elapsed, cpu * 1000 / len(samples), symbols


def scan_rspamd(port: int, samples: list[Sample], concurrency: int) -> tuple[float, int, collections.Counter]:
    """messages/s, failed requests, tallied symbols."""
    import aiohttp

    symbols: collections.Counter[str] = collections.Counter()
    failures = 0
    out: list[float] = []

    async def main() -> None:
        nonlocal failures
        url = f"http://127.0.0.1:{port}/checkv2"
        connector = aiohttp.TCPConnector(limit=concurrency)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            gate = asyncio.Semaphore(concurrency)

            async def one(s: Sample) -> None:
                nonlocal failures
                headers = {"IP": s.client_ip, "Helo": s.helo, "Hostname": s.helo,
                           "From": s.mail_from, "Rcpt": RCPT}
                async with gate:
                    try:
                        async with session.post(url, data=s.raw, headers=headers) as response:
                            reply = await response.json(content_type=None)
                    except (TimeoutError, aiohttp.ClientError, ValueError):
                        failures += 1
                        return
                if "symbols" not in reply:
                    failures += 1
                    return
                symbols.update(name for name in reply["symbols"] if name in TALLIED)

            start = time.perf_counter()
            await asyncio.gather(*(one(s) for s in samples))
            out.append(time.perf_counter() - start)

    asyncio.run(main())
    return len(samples) / out[0], failures, symbols


# ---------------------------------------------------------------- main


def parse_list(text: str, kind=float) -> list:
    return [kind(x) for x in text.split(",") if x.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=500, help="messages per run (default 500)")
    parser.add_argument("--delay-ms", default="0,2", help="per-answer DNS delays, comma-separated (0,2)")
    parser.add_argument("--concurrency", default="1,8", help="messages in flight, comma-separated (1,8)")
    parser.add_argument("--key-bits", type=int, default=1024, help="RSA size of each domain's DKIM key")
    parser.add_argument("--skip-rspamd", action="store_true")
    parser.add_argument("--no-install", action="store_true", help="do not apt-get install rspamd")
    parser.add_argument("--show-other", action="store_true", help="print the DNS questions of no known kind")
    parser.add_argument("--compare-questions", action="store_true",
                        help="print, per kind, the questions of the first run only one system asked")
    args = parser.parse_args()
    delays = parse_list(args.delay_ms)
    levels = parse_list(args.concurrency, int)
    combos = [(d, c) for d in delays for c in levels]

    overrides = {"dns.nameserver": "127.0.0.1:53", "log.level": "error",
                 "scan.dnsbl.zones": SMTPPROXY_ZONES}
    cfg0 = config.load(None, overrides)
    files = corpus(args.messages)
    started = time.perf_counter()
    world = build_world(files, len(combos), args.key_bits, cfg0.scan.dmarc.public_suffix_list)
    spam = sum(s.spam for s in world.runs[1])
    print(f"prepared {sum(map(len, world.runs))} signed messages ({len(world.runs[1])} per run, "
          f"{spam} spam) and {len(world.records)} DNS names in {time.perf_counter() - started:.0f} s",
          flush=True)

    rspamd_problem = None if args.skip_rspamd else apt_install(["rspamd"], not args.no_install)
    dns_proc = DnsProcess(dict(world.records))
    del world.records
    results: dict[tuple[str, float, int], RunResult] = {}
    rspamd = None
    asked: dict[str, set[tuple[str, str]]] = {}
    try:
        cfg = config.load(None, {**overrides, "dns.nameserver": dns_proc.nameserver})
        engine = build_engine(cfg)
        with tempfile.TemporaryDirectory(prefix="realtraffic-bench-") as tmp:
            port = None
            if not args.skip_rspamd and rspamd_problem is None:
                rspamd, port, _cport = start_rspamd(
                    Path(tmp) / "rspamd", dns_proc.nameserver,
                    extra={"rbl.conf": "enabled = true;\n"}, override={"rbl.conf": RSPAMD_RBL})
                wait_until(lambda: port_open(port) or rspamd.poll() is not None, 120, "rspamd")
                if rspamd.poll() is not None:
                    rspamd_problem, rspamd = "rspamd exited at start", None
            warmup = world.runs[0]
            scan_smtpproxy(engine, cfg, warmup, 8)
            if rspamd is not None:
                waited = wait_until_idle(rspamd.pid)
                scan_rspamd(port, warmup, 8)
                waited += wait_until_idle(rspamd.pid)
                print(f"rspamd ready (Hyperscan databases compiled) after {waited:.0f} s", flush=True)
            for (delay, concurrency), samples in zip(combos, world.runs[1:], strict=True):
                dns_proc.delay(delay / 1000)
                before = dns_proc.counts()[0]
                dns_proc.questions()
                dns_cpu = cpu_seconds(dns_proc.proc.pid)
                rate, cpu_ms, symbols = scan_smtpproxy(engine, cfg, samples, concurrency)
                busy = (cpu_seconds(dns_proc.proc.pid) - dns_cpu) * rate / len(samples)
                after = dns_proc.counts()[0]
                asked["smtpproxy"] = asked.get("smtpproxy") or dns_proc.questions()
                results["smtpproxy", delay, concurrency] = RunResult(rate, cpu_ms, after - before, symbols,
                                                                     busy)
                print(f"  delay {delay:g} ms, {concurrency} in flight: smtpproxy {rate:.0f} msg/s", flush=True)
                if rspamd is None:
                    continue
                cpu0 = process_tree_cpu_seconds(rspamd.pid)
                before = dns_proc.counts()[0]
                dns_cpu = cpu_seconds(dns_proc.proc.pid)
                rate, failures, symbols = scan_rspamd(port, samples, concurrency)
                busy = (cpu_seconds(dns_proc.proc.pid) - dns_cpu) * rate / len(samples)
                after = dns_proc.counts()[0]
                asked["rspamd"] = asked.get("rspamd") or dns_proc.questions()
                cpu_ms = (process_tree_cpu_seconds(rspamd.pid) - cpu0) * 1000 / len(samples)
                results["rspamd", delay, concurrency] = RunResult(rate, cpu_ms, after - before, symbols,
                                                                  busy, failures)
                print(f"  delay {delay:g} ms, {concurrency} in flight: rspamd {rate:.0f} msg/s", flush=True)
            others = dns_proc.counts()[1]
            if rspamd is not None:
                stop(rspamd, 30)
                rspamd = None
    finally:
        if rspamd is not None:
            stop(rspamd, 30)
        dns_proc.stop()

    report(results, world, combos, args, rspamd_problem, others)
    if args.compare_questions and len(asked) == 2:
        compare(asked)
    return 0


def compare(asked: dict[str, set[tuple[str, str]]]) -> None:
    print("\nquestions of the first run only one system asked (distinct names, examples):")
    for kind in QUERY_KINDS:
        for one, other in (("smtpproxy", "rspamd"), ("rspamd", "smtpproxy")):
            only = [(n, t) for n, t in asked[one] - asked[other] if query_kind(n, t) == kind]
            # The sender domain written as D, so one line stands for every message.
            shapes = collections.Counter(f"{SENDER_DOMAIN.sub('D', n)} {t}" for n, t in only)
            if only:
                shown = ", ".join(f"{shape} x{count}" for shape, count in shapes.most_common(8))
                print(f"  {kind:<6} only {one:<10} {len(only):>5}: {shown}")


def report(results, world: World, combos, args, rspamd_problem, others) -> None:
    n = len(world.runs[1])
    print(f"\ncold-DNS benchmark: {n} messages per run ({sum(s.spam for s in world.runs[1])} spam) "
          f"of the SpamAssassin corpus, each from a domain never seen before; {os.cpu_count()} cores; "
          f"DKIM keys RSA {args.key_bits}")
    kinds = " ".join(f"{k:>6}" for k in QUERY_KINDS)
    print(f"{'delay':>6} {'flight':>6} {'system':<10} {'msg/s':>7} {'CPU ms/msg':>10} {'DNS q/msg':>9} "
          f"{'DNS srv busy':>12}   per message: {kinds}")
    for delay, concurrency in combos:
        for system in ("smtpproxy", "rspamd"):
            r = results.get((system, delay, concurrency))
            if r is None:
                continue
            total = sum(r.queries.values()) / n
            per_kind = " ".join(f"{r.queries[k] / n:>6.2f}" for k in QUERY_KINDS)
            failed = f"  ({r.failures} failed)" if r.failures else ""
            print(f"{delay:>4g}ms {concurrency:>6} {system:<10} {r.rate:>7.1f} {r.cpu_ms:>10.2f} "
                  f"{total:>9.2f} {r.dns_busy:>11.0%}   {' ' * 13}{per_kind}{failed}")
    if rspamd_problem:
        print(f"rspamd skipped: {rspamd_problem}")
    for delay, concurrency in combos:
        ours, theirs = results.get(("smtpproxy", delay, concurrency)), results.get(("rspamd", delay, concurrency))
        if ours and theirs:
            print(f"smtpproxy / rspamd at {delay:g} ms, {concurrency} in flight: "
                  f"{ours.rate / theirs.rate:.2f}x messages/s, {ours.cpu_ms / theirs.cpu_ms:.2f}x CPU per message")
    print(f"\nsymbols over all runs ({n * len(combos)} messages):")
    print(f"{'symbol':<22} {'smtpproxy':>9} {'rspamd':>9}")
    for symbol in TALLIED:
        counts = [sum(r.symbols[symbol] for (s, _d, _c), r in results.items() if s == system)
                  for system in ("smtpproxy", "rspamd")]
        if any(counts):
            print(f"{symbol:<22} {counts[0]:>9} {counts[1] if not args.skip_rspamd else '-':>9}")
    if args.show_other and others:
        print("\nDNS questions of no known kind (first 50 names):")
        for name, count in sorted(others.items(), key=lambda x: -x[1]):
            print(f"  {count:>6} {name}")


if __name__ == "__main__":
    sys.exit(main())
