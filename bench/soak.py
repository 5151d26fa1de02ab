#!/usr/bin/env python3
"""Soak: a real sending MTA through the whole path while faults are injected.

    .venv/bin/python bench/soak.py [--messages 10000] [--concurrency 20] [--no-faults] [--seed 1]

The path, every part a real process on 127.0.0.1:

    injector ─► sending Postfix (queues; retries 4xx after 2-4 s) ─► front smtpd
      (smtpd_proxy_filter) ─► smtpproxy (scan, DKIM signing, autolearn and
      greylisting on Redis, DNS from a local server) ─► re-injection smtpd ─►
      queue ─► smtp-sink (one file per arrival)

Each message has its own Message-ID; one in ten has a subject in capitals and
is greylisted at DATA (1 s delay), so the store is on the path of every tenth
message and the sender's retries are on the path of every run, faults or not.

Faults, on a schedule from ``--seed`` (the first round holds each class once,
in random order; after that a random class each time, until the sender's
queue is empty):

- the re-injection smtpd taken away and brought back (``postfix reload``);
- the proxy SIGKILLed and started again half a second later (systemd's
  Restart=always);
- SIGHUP reloads of a valid file, and of a broken one (the running
  configuration must stay; the log must say the reload was refused);
- the DNS server not answering (each lookup times out: a temporary failure);
- redis-server SIGSTOPped, then SIGCONTed, or SIGKILLed and started again on
  the same port (its data gone);
- clients cut off: through the front smtpd, reset in the middle of DATA (these
  partial messages must never arrive); and straight at the proxy, reset right
  after MAIL, as a front smtpd that died while the proxy waits for the
  re-injection listener's reply (the re-injection smtpd answers that sender's
  MAIL only after 2 s, Postfix's ``sleep`` restriction, so the cut always
  lands in the wait).

What is checked once the sender's queue has drained (bounded wait, flushing):
every Message-ID arrived (``lost``); nothing bounced (``status=bounced`` in
either Postfix's log, or a bounce message at the sink); no cut-off message
arrived; both queues are empty; and duplicates stay within what the contract
allows. A duplicate is allowed only where the re-injection listener queued a
copy (its 250) and the proxy was killed before the sender heard that 250:
the sender then retries, and a second copy is the price of never losing one.
The same holds one hop further: stopping the re-injection listener
(``postfix reload`` without its service) ends its smtpd processes, and one
that had queued a message but not yet written its 250 leaves the proxy with a
lost connection at end-of-data: the proxy answers 451 (right: it never saw a
250), the sender retries, a second copy arrives (RFC 1047's window, which no
proxy can close). Those windows are counted from the logs: a copy the
re-injection Postfix queued (qmgr's ``from=`` line) whose queue ID never
appears in a ``status=sent (250 ... queued as ID)`` line of the sender is
*unanswered*; it is a window when its cleanup line is stamped at most 3 s
before (or 1 s after) a SIGKILL of the proxy or the moment the re-injection
port was found closed (the logs have whole seconds; cleanup may finish a
message after the smtpd that fed it died). Unanswered copies away from both
are reported apart: they are duplicates the contract does not excuse.

Throughput is the number of distinct messages that arrived over the time from
the first injection to the last arrival; it includes the retries the faults
cause, so compare runs with the same seed. The exit status is non-zero when
anything is lost, bounced, leaked, duplicated beyond the allowance or left
queued, or (with faults) when a fault class never ran.
"""

from __future__ import annotations

import argparse
import collections
import email.utils
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.pipeline import REPO, Pipeline  # noqa: E402
from tests.support.postfix import wait_until  # noqa: E402
from tests.support.redis import RedisServer, start_redis  # noqa: E402
from tests.support.sender import (  # noqa: E402
    PausableDns,
    SendingPostfix,
    cut_after_mail,
    cut_in_data,
    maillog_time,
)

SENDER = "alice@example.org"
RECIPIENT = "sink@example.net"
DKIM_SELECTOR = "soak2026"
# A copy queued downstream this long (whole seconds of the log) before a kill counts as a window.
KILL_WINDOW_S = 3.0
RESTART_DELAY_S = 0.5
# The re-injection smtpd answers MAIL from this sender only after SLOW_MAIL_S (a
# restriction class with Postfix's "sleep"), so a client cut off right after MAIL
# leaves the proxy waiting for that reply: the moment the pool must not reuse.
SLOW_SENDER = "slow@example.org"
SLOW_MAIL_S = 2

FAULTS = {
    "reinjection": "re-injection smtpd stopped and started",
    "proxy_kill": "proxy SIGKILLed and restarted",
    "reload": "SIGHUP reload",
    "reload_broken": "SIGHUP reload of a broken config",
    "dns_pause": "DNS server paused",
    "redis_cont": "redis-server SIGSTOP, SIGCONT",
    "redis_restart": "redis-server SIGSTOP, killed, restarted",
    "cut_data": "client reset mid-DATA (via the front)",
    "cut_mail": "front gone while proxy awaits MAIL reply",
}
# Ways to break the proxy's file for a reload: each must be refused as a whole.
BROKEN_CONFIGS = {
    "cut short": lambda text: text[:len(text) // 2] + '\n[proxy\nhostname = "',
    "unknown key": lambda text: text.replace("[proxy]\n", "[proxy]\nno_such_key = 1\n", 1),
    "bad value": lambda text: text.replace('level = "info"', 'level = "loud"', 1),
}


@dataclass
class SoakOptions:
    messages: int = 10_000
    concurrency: int = 20
    faults: bool = True
    seed: int = 1
    # Seconds between faults, and how long one stays (both drawn uniformly).
    interval_s: tuple[float, float] = (2.0, 6.0)
    hold_s: tuple[float, float] = (2.0, 5.0)
    # Messages a second handed to the sender; 0: spread them over one round of faults.
    inject_rate: float = 0.0
    # Stop injecting faults after this many (0: go on until the sender's queue is empty).
    max_faults: int = 0
    # Cut-off connections per cut fault.
    cuts: int = 4
    drain_timeout_s: float = 600.0
    backoff_s: int = 2


@dataclass
class SoakResult:
    injected: int = 0
    fault_counts: dict[str, int] = field(default_factory=dict)
    arrived: int = 0                  # distinct expected Message-IDs at the sink
    copies: int = 0                   # files at the sink
    signed: int = 0                   # copies with a DKIM-Signature
    notices: int = 0                  # postmaster notices of the front (not bounces)
    bounce_messages: int = 0          # arrivals with a null sender (counted in bounced)
    lost: list[str] = field(default_factory=list)
    duplicated: dict[str, int] = field(default_factory=dict)   # Message-ID -> extra copies
    allowed: int = 0                  # unanswered copies in kill or re-injection-stop windows
    allowed_by_kill: int = 0          # of those, next to a SIGKILL of the proxy
    unanswered: list[str] = field(default_factory=list)        # downstream queue IDs
    unexplained: list[str] = field(default_factory=list)       # of those, away from any kill
    bounced: int = 0
    bounce_detail: str = ""
    leaked: list[str] = field(default_factory=list)            # cut-off messages that arrived
    strangers: list[str] = field(default_factory=list)         # arrivals nobody sent
    queue_empty: bool = False
    deferrals: int = 0
    throughput: float = 0.0
    inject_rate: float = 0.0          # the pace of injection (0: unpaced)
    traffic_s: float = 0.0
    elapsed_s: float = 0.0
    notes: list[str] = field(default_factory=list)             # faults that misbehaved
    evidence: list[str] = field(default_factory=list)          # log lines about failures

    @property
    def duplicates(self) -> int:
        return sum(self.duplicated.values())

    def failures(self, faults: bool) -> list[str]:
        out = []
        if self.lost:
            out.append(f"{len(self.lost)} lost")
        if self.bounced:
            out.append(f"{self.bounced} bounced")
        if self.duplicates > self.allowed:
            out.append(f"{self.duplicates} duplicates > {self.allowed} allowed")
        if self.leaked:
            out.append(f"{len(self.leaked)} cut-off messages delivered")
        if self.strangers:
            out.append(f"{len(self.strangers)} unexpected arrivals")
        if not self.queue_empty:
            out.append("a queue is not empty")
        if faults:
            missing = [k for k in FAULTS if not self.fault_counts.get(k)]
            if missing:
                out.append(f"fault classes never injected: {', '.join(missing)}")
        return out


def message(run: str, i: int) -> tuple[str, bytes]:
    """The i-th message: its Message-ID and bytes. Every tenth is greylisted (capitals)."""
    msgid = f"soak-{run}-{i:06d}@example.org"
    subject = "IMPORTANT NOTICE ABOUT YOUR ORDER" if i % 10 == 9 else f"Order {i} has shipped"
    lines = [f"Line {n} of message {i}: the parcel left the depot and is on its way to you."
             for n in range(20)]
    raw = (f"From: Alice <{SENDER}>\r\nTo: Sink <{RECIPIENT}>\r\nSubject: {subject}\r\n"
           f"Date: {email.utils.formatdate(localtime=True)}\r\nMessage-ID: <{msgid}>\r\n"
           f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
           + "\r\n".join(lines) + f"\r\ntoken {msgid}\r\n")
    return msgid, raw.encode()


class World:
    """Every server of one soak run; ``stop`` stops each one that was started."""

    def __init__(self, base: Path, opts: SoakOptions):
        self.base = base
        self.opts = opts
        self.dns: PausableDns | None = None
        self.redis: RedisServer | None = None
        self.pipeline: Pipeline | None = None
        self.sender: SendingPostfix | None = None
        self.redis_port = 0

    def start(self) -> None:
        self.dns = PausableDns({
            "example.org": [("TXT", "v=spf1 ip4:127.0.0.0/8 -all")],
            "_dmarc.example.org": [("TXT", "v=DMARC1; p=none")],
            "sender.example.org": [("A", "127.0.0.1")],
        }, default_ttl=1, negative_ttl=1).start()
        keys = self.base / "keys"
        keys.mkdir(parents=True)
        self.dns.add(f"{DKIM_SELECTOR}._domainkey.example.org", "TXT", keygen(keys))
        (keys / "key_table").write_text(
            f"soak example.org:{DKIM_SELECTOR}:{keys / f'example.org.{DKIM_SELECTOR}.key'}\n")
        (keys / "signing_table").write_text("example.org soak\n")
        self.redis = start_redis(str(self.base / "redis"))
        self.redis_port = self.redis.port
        self.pipeline = Pipeline(self.base / "pipeline", scan=True, extra_config=f"""
greylist_delay_s = 1.0
[scan.actions]
greylist = 2.0
[scan.bayes]
autolearn = true
autolearn_ham_score = 0.0
[sign]
key_table = "{keys / 'key_table'}"
signing_table = "{keys / 'signing_table'}"
profiles = ["inbound"]
[store]
url = "redis://127.0.0.1:{self.redis_port}/0"
timeout_s = 1.0
backoff_max_s = 2.0
[dns]
nameserver = "{self.dns.nameserver}"
timeout_s = 1.0
cache_max_ttl_s = 1.0
cache_negative_ttl_s = 1.0
""")
        pf = self.pipeline.postfix
        # Queue IDs that are never reused within a run: they tie the logs together.
        pf.params["enable_long_queue_ids"] = "yes"
        pf.params["smtpd_restriction_classes"] = "soak_slow_mail"
        pf.params["soak_slow_mail"] = f"sleep {SLOW_MAIL_S}, permit"
        pf.params["soak_slow_senders"] = f"inline:{{{SLOW_SENDER}=soak_slow_mail}}"
        pf.services[self.pipeline.reinject_service] += (
            "\n  -o smtpd_delay_reject=no"
            "\n  -o smtpd_sender_restrictions=check_sender_access,$soak_slow_senders")
        self.pipeline.start()
        self.sender = SendingPostfix(self.base / "sender", self.pipeline.inbound_port,
                                     self.opts.concurrency, self.opts.backoff_s)
        self.sender.start()

    def stop(self) -> None:
        """Stop everything, each part on its own (one failing does not keep the rest up)."""
        for what in (self.sender, self.pipeline):
            if what is not None:
                try:
                    what.stop()
                except Exception as exc:  # keep stopping the others
                    print(f"soak: stopping {type(what).__name__}: {exc}", file=sys.stderr)
        if self.redis is not None:
            if self.redis.proc.poll() is None:
                self.redis.proc.send_signal(signal.SIGCONT)  # a stopped process ignores SIGTERM
            self.redis.stop()
        if self.dns is not None:
            self.dns.stop()


def keygen(directory: Path) -> list[str]:
    """``smtpproxy dkim keygen``; the TXT record's strings as it printed them."""
    out = subprocess.run(
        [sys.executable, "-m", "smtpproxy.cli", "dkim", "keygen", "-d", "example.org",
         "-s", DKIM_SELECTOR, "--type", "rsa", "--dir", str(directory)],
        capture_output=True, text=True, cwd=REPO, timeout=120, check=True,
        env=dict(os.environ, PYTHONPATH=str(REPO))).stdout
    line = next(x for x in out.splitlines() if x.startswith(f"{DKIM_SELECTOR}._domainkey."))
    return re.findall(r'"([^"]*)"', line)


class Faults:
    """The fault injectors; each one applies its fault and undoes it before returning."""

    def __init__(self, world: World, opts: SoakOptions, rng: random.Random, run: str):
        self.w = world
        self.opts = opts
        self.rng = rng
        self.run = run
        self.counts: collections.Counter[str] = collections.Counter()
        self.kill_times: list[float] = []
        self.reinjection_stops: list[float] = []
        self.cut_ids: list[str] = []
        self.notes: list[str] = []

    def hold(self) -> float:
        return self.rng.uniform(*self.opts.hold_s)

    def apply(self, kind: str) -> None:
        getattr(self, kind)()
        self.counts[kind] += 1

    def reinjection(self) -> None:
        p = self.w.pipeline
        line = p.stop_reinjection()
        # The port is closed: Postfix has stopped the listener's smtpd processes,
        # some of them between queueing a message and writing its 250.
        self.reinjection_stops.append(time.time())
        time.sleep(self.hold())
        p.start_reinjection(line)

    def proxy_kill(self) -> None:
        proxy = self.w.pipeline.proxy
        self.kill_times.append(time.time())
        proxy.signal(signal.SIGKILL)
        proxy.proc.wait(10)
        time.sleep(RESTART_DELAY_S)
        proxy.start(self.w.pipeline.proxy_port)

    def _hup(self, want: str) -> None:
        proxy = self.w.pipeline.proxy
        before = len(proxy.log_text())
        proxy.signal(signal.SIGHUP)
        try:
            wait_until(lambda: re.search(r"configuration reloaded|reload refused|reload failed",
                                         proxy.log_text()[before:]), 15, "the reload's log line")
        except TimeoutError:
            self.notes.append("SIGHUP: no reload line in the proxy's log within 15 s")
            return
        said = proxy.log_text()[before:]
        if want not in said:
            first = next((x for x in said.splitlines() if "reload" in x), said[:200])
            self.notes.append(f"SIGHUP ({want!r} expected): {first}")

    def reload(self) -> None:
        self._hup("configuration reloaded")

    def reload_broken(self) -> None:
        proxy = self.w.pipeline.proxy
        how = self.rng.choice(sorted(BROKEN_CONFIGS))
        proxy.config.write_text(BROKEN_CONFIGS[how](proxy.config_text))
        try:
            self._hup("reload refused")
            if proxy.proc.poll() is not None:
                self.notes.append(f"the proxy exited on a broken reload ({how})")
        finally:
            proxy.config.write_text(proxy.config_text)
        if proxy.proc.poll() is not None:  # restart it, as systemd would, and go on
            proxy.start(self.w.pipeline.proxy_port)

    def dns_pause(self) -> None:
        self.w.dns.paused = True
        try:
            time.sleep(self.hold())
        finally:
            self.w.dns.paused = False

    def redis_cont(self) -> None:
        self.w.redis.proc.send_signal(signal.SIGSTOP)
        try:
            time.sleep(self.hold())
        finally:
            self.w.redis.proc.send_signal(signal.SIGCONT)

    def redis_restart(self) -> None:
        old = self.w.redis
        old.proc.send_signal(signal.SIGSTOP)
        time.sleep(self.hold())
        old.proc.kill()
        old.proc.wait(10)
        self.w.redis = start_redis(old.directory, port=self.w.redis_port)

    def _cut_id(self) -> str:
        msgid = f"cut-{self.run}-{len(self.cut_ids):04d}@example.org"
        self.cut_ids.append(msgid)
        return msgid

    def cut_data(self) -> None:
        for _ in range(self.opts.cuts):
            msgid = self._cut_id()
            head = (f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: cut off\r\n"
                    f"Message-ID: <{msgid}>\r\n\r\n").encode() + b"partial line\r\n" * 200
            cut_in_data(self.w.pipeline.inbound_port, SENDER, RECIPIENT, head)

    def cut_mail(self) -> None:
        for _ in range(self.opts.cuts):
            cut_after_mail(self.w.pipeline.proxy_port, SLOW_SENDER)
            time.sleep(0.05)


@dataclass
class Arrivals:
    by_msgid: collections.Counter[str]    # our messages (and strangers) by Message-ID
    copies: int = 0
    signed: int = 0                       # copies with a DKIM-Signature
    bounces: int = 0                      # null envelope sender: a bounce or a DSN
    notices: int = 0                      # Postfix's own reports to the postmaster


def sink_arrivals(sink_dir: Path) -> Arrivals:
    """What smtp-sink recorded, one file per arrival."""
    got = Arrivals(collections.Counter())
    for path in sorted(sink_dir.iterdir()) if sink_dir.exists() else ():
        head = path.read_bytes().split(b"\n\n", 1)[0]
        got.copies += 1
        mail_from = re.search(rb"^X-Mail-Args: <([^>]*)>", head, re.M)
        sender = mail_from.group(1) if mail_from else b"?"
        if sender == b"":
            got.bounces += 1
            continue
        if sender.startswith(b"double-bounce@"):
            # notify_classes (resource, software): "Postfix SMTP server: errors from
            # ..." transcripts, sent when the front could not reach the proxy. Not a
            # bounce: no sender is told anything.
            got.notices += 1
            continue
        m = re.search(rb"^Message-ID:\s*<([^>]*)>", head, re.M | re.I)
        got.by_msgid[m.group(1).decode("latin-1") if m else f"(none: {path.name})"] += 1
        if re.search(rb"^DKIM-Signature:", head, re.M | re.I):
            got.signed += 1
    return got


def unanswered_copies(filter_log: str, sender_log: str) -> dict[str, float]:
    """Queue IDs the re-injection Postfix queued (from our sender) that the sender never
    heard a 250 for, with the time of their cleanup line."""
    cleaned: dict[str, float] = {}
    for line in filter_log.splitlines():
        m = re.search(r"/cleanup\[\d+\]: (\w+): message-id=", line)
        if m:
            cleaned[m.group(1)] = maillog_time(line) or 0.0
    queued = set(re.findall(rf"/qmgr\[\d+\]: (\w+): from=<{re.escape(SENDER)}>", filter_log))
    heard = set(re.findall(r"status=sent \(250 [^)]*queued as (\w+)\)", sender_log))
    return {qid: cleaned.get(qid, 0.0) for qid in queued - heard}


def kill_windows(unanswered: dict[str, float], kill_times: list[float]) -> tuple[int, list[str]]:
    """(allowed duplicates, unexplained queue IDs): an unanswered copy is a window
    when its cleanup line (whole seconds, rounded down) lies at most KILL_WINDOW_S
    before one of ``kill_times`` (a SIGKILL of the proxy, or the moment the
    re-injection smtpd's processes were gone), or in the second after it: cleanup
    finishes a message whose smtpd has just died, and logs it then."""
    unexplained = sorted(qid for qid, t in unanswered.items()
                         if not any(k - KILL_WINDOW_S <= t <= k + 1 for k in kill_times))
    return len(unanswered) - len(unexplained), unexplained


def evidence_for(msgids: list[str], sender_log: str, proxy_log: str, limit: int = 5) -> list[str]:
    """Log lines about some Message-IDs: the sender's delivery attempts, and the proxy's
    lines for the downstream queue IDs they were answered with."""
    out = []
    for msgid in msgids[:limit]:
        out.append(f"-- {msgid}")
        qids = re.findall(rf"(\w+): message-id=<{re.escape(msgid)}>", sender_log)
        for qid in qids:
            for line in sender_log.splitlines():
                if f" {qid}: " in line and ("status=" in line or "message-id" in line):
                    out.append("sender: " + line)
                    for dqid in re.findall(r"queued as (\w+)", line):
                        out.extend("proxy:  " + x for x in proxy_log.splitlines() if dqid in x)
    return out


def run_soak(base: Path, opts: SoakOptions, progress=None) -> SoakResult:
    """One soak run under ``base``; every process started is stopped before it returns."""
    say = progress or (lambda _text: None)
    rng = random.Random(opts.seed)
    run = f"{opts.seed}-{int(time.time())}"
    result = SoakResult()
    started = time.monotonic()
    world = World(base, opts)
    try:
        world.start()
        say("world up: sender -> front -> proxy -> re-injection -> sink")
        faults = Faults(world, opts, rng, run)
        kinds = list(FAULTS)
        order = rng.sample(kinds, len(kinds))
        rate = opts.inject_rate
        if rate <= 0:
            mean = sum(opts.interval_s) / 2 + sum(opts.hold_s) / 2 + 1.0
            rate = opts.messages / (len(kinds) * mean) if opts.faults else 0.0
            rate = 0.0 if rate >= 200 else rate
        result.inject_rate = rate
        messages = [message(run, i) for i in range(opts.messages)]
        expected = {msgid for msgid, _ in messages}
        injected: list[int] = []
        inject_errors: list[BaseException] = []

        def inject() -> None:
            try:
                injected.append(world.sender.inject(
                    ((SENDER, RECIPIENT, raw) for _, raw in messages), rate))
            except BaseException as exc:  # reported by the main thread
                inject_errors.append(exc)

        traffic_start = time.time()
        injector = threading.Thread(target=inject, name="soak-injector", daemon=True)
        injector.start()
        say(f"injecting {opts.messages} messages"
            f"{f' at {rate:.1f}/s' if rate else ''}, faults {'on' if opts.faults else 'off'}")

        def traffic_over() -> bool:
            return not injector.is_alive() and world.sender.queued() == 0

        step = 0
        fault_deadline = started + opts.drain_timeout_s * 2
        while opts.faults and time.monotonic() < fault_deadline:
            if step >= len(order) and traffic_over():
                break
            if opts.max_faults and step >= opts.max_faults:
                break
            time.sleep(rng.uniform(*opts.interval_s))
            kind = order[step] if step < len(order) else rng.choice(kinds)
            say(f"fault {step + 1}: {FAULTS[kind]}")
            faults.apply(kind)
            step += 1
        injector.join(opts.drain_timeout_s)
        if inject_errors:
            raise RuntimeError(f"injection failed: {inject_errors[0]!r}")
        result.injected = injected[0] if injected else 0
        say("draining the sender's queue")
        drained = world.sender.wait_drained(opts.drain_timeout_s)
        p = world.pipeline
        if drained:
            try:
                wait_until(p.postfix.queue_is_empty, 120, "the filter host's queue", interval=0.2)
            except TimeoutError:
                pass
        # The last arrival: smtp-sink writes the file before it answers.
        last = max((f.stat().st_mtime for f in p.sink.files()), default=time.time())
        result.traffic_s = max(0.001, last - traffic_start)
        result.queue_empty = (world.sender.queued() == 0 and world.sender.postfix.queue_is_empty()
                              and p.postfix.queue_is_empty())

        got = sink_arrivals(p.sink.directory)
        counts = got.by_msgid
        result.copies, result.signed, result.notices = got.copies, got.signed, got.notices
        result.bounce_messages = got.bounces
        result.arrived = sum(1 for m in expected if counts[m])
        result.lost = sorted(expected - set(counts))
        result.duplicated = {m: c - 1 for m, c in counts.items() if m in expected and c > 1}
        cut = set(faults.cut_ids)
        result.leaked = sorted(m for m in counts if m in cut)
        result.strangers = sorted(m for m in counts if m not in expected and m not in cut)
        sender_log = world.sender.postfix.log_text()
        filter_log = p.postfix.log_text()
        proxy_log = p.proxy.log_text()
        sender_bounced = len(re.findall(r"status=bounced", sender_log))
        filter_bounced = len(re.findall(r"status=bounced", filter_log))
        result.bounced = sender_bounced + filter_bounced + got.bounces
        result.bounce_detail = (f"sender's log {sender_bounced}, filter host's log {filter_bounced},"
                                f" bounce messages at the sink {got.bounces}")
        result.deferrals = len(re.findall(r"status=deferred", sender_log))
        unanswered = unanswered_copies(filter_log, sender_log)
        result.unanswered = sorted(unanswered)
        result.allowed, result.unexplained = kill_windows(
            unanswered, faults.kill_times + faults.reinjection_stops)
        result.allowed_by_kill, _ = kill_windows(unanswered, faults.kill_times)
        result.fault_counts = {k: faults.counts.get(k, 0) for k in FAULTS}
        result.notes = faults.notes
        result.throughput = result.arrived / result.traffic_s
        if result.lost:
            result.evidence += evidence_for(result.lost, sender_log, proxy_log)
        if result.duplicates > result.allowed:
            result.evidence += evidence_for(sorted(result.duplicated), sender_log, proxy_log)
        for qid in result.unexplained[:5]:
            result.evidence += [f"-- unanswered copy {qid}"] + [
                x for x in (filter_log + proxy_log).splitlines() if qid in x]
        if not result.queue_empty:
            result.evidence.append("sender's queue:\n" + world.sender.postqueue("-p")[:3000])
    finally:
        world.stop()
        result.elapsed_s = time.monotonic() - started
    return result


def report(result: SoakResult, opts: SoakOptions) -> list[str]:
    lines = [f"soak: {opts.messages} messages, concurrency {opts.concurrency}, "
             f"faults {'on' if opts.faults else 'off'}, seed {opts.seed}"]
    lines.append("faults injected:")
    for kind, name in FAULTS.items():
        lines.append(f"  {name:<44} {result.fault_counts.get(kind, 0):>4}")
    lines.append(f"  {'total':<44} {sum(result.fault_counts.values()):>4}")
    ours = result.copies - result.notices - result.bounce_messages
    lines.append(f"messages: injected {result.injected}, arrived {result.arrived} distinct in "
                 f"{ours} copies, {result.signed} of them DKIM-signed")
    lines.append(f"postmaster notices of the front (notify_classes; not bounces): {result.notices}")
    lines.append(f"sender deferrals (retries the faults and greylisting caused): {result.deferrals}")
    lines.append(f"lost: {len(result.lost)}")
    lines.append(f"duplicated: {result.duplicates} (allowed {result.allowed}: copies queued "
                 f"downstream <= {KILL_WINDOW_S:.0f} s before a proxy SIGKILL "
                 f"({result.allowed_by_kill}) or the re-injection smtpd's stop "
                 f"({result.allowed - result.allowed_by_kill}), never answered 250)")
    lines.append(f"unanswered copies outside every window: {len(result.unexplained)}")
    lines.append(f"bounced: {result.bounced} ({result.bounce_detail})")
    lines.append(f"cut-off messages delivered: {len(result.leaked)}; unexpected arrivals: "
                 f"{len(result.strangers)}")
    lines.append(f"queues empty at the end: {'yes' if result.queue_empty else 'NO'}")
    lines.append(f"throughput: {result.throughput:.1f} msg/s ({result.arrived} messages in "
                 f"{result.traffic_s:.1f} s, first injection to last arrival; injection "
                 + (f"paced at {result.inject_rate:.1f}/s)" if result.inject_rate else "unpaced)"))
    lines.append(f"elapsed: {result.elapsed_s:.1f} s (set-up, run, drain, tear-down)")
    for note in result.notes:
        lines.append(f"fault note: {note}")
    if result.lost:
        lines.append("lost Message-IDs: " + " ".join(result.lost[:20]))
    if result.duplicated:
        lines.append("duplicated Message-IDs: " + " ".join(sorted(result.duplicated)[:20]))
    if result.leaked:
        lines.append("cut-off messages delivered: " + " ".join(result.leaked[:20]))
    if result.strangers:
        lines.append("unexpected arrivals: " + " ".join(result.strangers[:20]))
    lines.extend(result.evidence[:200])
    failures = result.failures(opts.faults)
    lines.append("result: " + ("PASS" if not failures else "FAIL: " + "; ".join(failures)))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=20,
                        help="the sender's parallel connections to the front")
    parser.add_argument("--faults", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--inject-rate", type=float, default=0.0,
                        help="messages a second handed to the sender (0: spread over one "
                             "round of faults, unlimited above 200/s)")
    parser.add_argument("--drain-timeout", type=float, default=600.0)
    parser.add_argument("--keep", action="store_true", help="keep the run's directory and logs")
    args = parser.parse_args()
    opts = SoakOptions(messages=args.messages, concurrency=args.concurrency, faults=args.faults,
                       seed=args.seed, inject_rate=args.inject_rate,
                       drain_timeout_s=args.drain_timeout)

    def on_term(_sig, _frame):
        raise KeyboardInterrupt  # unwinds through run_soak's clean-up

    signal.signal(signal.SIGTERM, on_term)
    base = Path(tempfile.mkdtemp(prefix="soak-"))
    try:
        result = run_soak(base, opts, progress=lambda text: print(
            f"[{time.strftime('%H:%M:%S')}] {text}", flush=True))
    except KeyboardInterrupt:
        print("soak: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"soak: files kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    for line in report(result, opts):
        print(line)
    return 1 if result.failures(opts.faults) else 0


if __name__ == "__main__":
    sys.exit(main())
