#!/usr/bin/env python3
"""Hit rates of the content symbols on the labelled corpus, and what each step costs.

    .venv/bin/python bench/symbols_bench.py [--limit N] [--symbols A,B,...] [--dns]

Every message of shared/corpora/spam-ham/LABELS.tsv (ham: easy_ham and
easy_ham_2; spam: spam and spam_2) is parsed and scanned by the content
checks (headers, mime, attachments) and the composites, through the shipped
engine. With --dns, by every check the shipped configuration runs, each
message sent as from its From domain by 192.0.2.1, against a local DNS
server that answers NXDOMAIN for every name (tests/support/dns_server.py):
what SPF, DKIM, DMARC, ARC and the composites over them make of mail whose
domains publish nothing.

Printed: for each symbol found, its score and the share of ham and of spam
it fires on, flagged when a positive score fires on more than 1% of ham;
then the CPU time per message of parsing, of each check and of the
composites (process time, mean over the corpus).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from smtpproxy.common import config  # noqa: E402
from smtpproxy.scan.checks.base import CheckContext  # noqa: E402
from smtpproxy.scan.checks.headers import HeadersCheck  # noqa: E402
from smtpproxy.scan.checks.mime import MimeCheck  # noqa: E402
from smtpproxy.scan.engine import Engine, SymbolResult  # noqa: E402
from smtpproxy.scan.message import parse  # noqa: E402
from smtpproxy.transaction import ClientInfo  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpora" / "spam-ham"
HAM_SOURCES = ("spamassassin:easy_ham", "spamassassin:easy_ham_2")
HAM_LIMIT = 0.01


def labelled(limit: int | None) -> list[tuple[Path, str]]:
    rows = []
    for line in (CORPUS / "LABELS.tsv").read_text().splitlines():
        if line.startswith("#"):
            continue
        path, label, source = line.split("\t")
        if label == "spam" or source in HAM_SOURCES:
            rows.append((CORPUS / path, label))
    return rows[:limit] if limit else rows


def checks(cfg: config.Config) -> list:
    found = [HeadersCheck(), MimeCheck()]
    try:
        from smtpproxy.scan.checks.attachments import AttachmentsCheck
    except ImportError:  # an older tree, for comparison
        return found
    return [*found, AttachmentsCheck(cfg)]


async def measure(rows: list[tuple[Path, str]], nameserver: str | None):
    if nameserver is None:
        cfg = config.load(None)
        all_checks, resolver = checks(cfg), None
    else:
        from smtpproxy.common.dns import Resolver
        from smtpproxy.scan.checks.all import all_checks as every_check
        cfg = config.load(None, {"dns.nameserver": nameserver, "log.level": "error"})
        all_checks, resolver = every_check(cfg), Resolver(cfg.dns)
    engine = Engine(cfg.scan, all_checks)
    symbols_of = {check.name: set(check.symbols) for check in all_checks}
    hits: dict[str, Counter] = {}
    totals: Counter = Counter()
    cpu: dict[str, float] = {"parse": 0.0, "composites": 0.0}
    for path, label in rows:
        raw = path.read_bytes()
        started = time.process_time()
        msg = parse(raw)
        cpu["parse"] += time.process_time() - started
        ctx = CheckContext(message=msg, client=ClientInfo(addr="192.0.2.1", helo="mail.example.org"),
                           mail_from=msg.from_address, rcpt_tos=["user@example.net"],
                           profile="inbound", resolver=resolver)
        found = []
        for check in all_checks:  # one by one, in the engine's order, to time each
            ctx.results = {name: [h for h in found if h.symbol in symbols_of[name]] for name in check.after}
            started = time.process_time()
            found.extend(await check.run(ctx))
            cpu[check.name] = cpu.get(check.name, 0.0) + time.process_time() - started
        symbols = {h.symbol: SymbolResult(h.symbol, engine.symbols[h.symbol].score, h.options)
                   for h in found}
        started = time.process_time()
        engine._composites(symbols)
        cpu["composites"] += time.process_time() - started
        totals[label] += 1
        for name in {*symbols, *(h.symbol for h in found)}:
            hits.setdefault(name, Counter())[label] += 1
    return hits, totals, {k: v / max(1, sum(totals.values())) for k, v in cpu.items()}, engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="first N messages only")
    parser.add_argument("--symbols", default="", help="only these symbols (comma-separated)")
    parser.add_argument("--dns", action="store_true", help="every check, against a local DNS server")
    args = parser.parse_args()
    rows = labelled(args.limit)
    if args.dns:
        from tests.support.dns_server import DnsTestServer
        dns = DnsTestServer({}).start()  # every name: NXDOMAIN, answered locally
        try:
            hits, totals, cpu, engine = asyncio.run(measure(rows, dns.nameserver))
        finally:
            dns.stop()
    else:
        hits, totals, cpu, engine = asyncio.run(measure(rows, None))
    wanted = set(filter(None, args.symbols.split(",")))
    print(f"messages: {totals['ham']} ham, {totals['spam']} spam")
    print(f"{'symbol':34} {'score':>6} {'ham %':>7} {'spam %':>7}")
    for name in sorted(hits, key=lambda n: (-hits[n]["spam"], n)):
        if wanted and name not in wanted:
            continue
        score = engine.symbols[name].score
        ham = hits[name]["ham"] / max(1, totals["ham"])
        spam = hits[name]["spam"] / max(1, totals["spam"])
        flag = "  <-- positive score on >1% of ham" if score > 0 and ham > HAM_LIMIT else ""
        print(f"{name:34} {score:6.2f} {100 * ham:6.2f}% {100 * spam:6.2f}%{flag}")
    print("CPU per message (process time, mean):")
    for step, seconds in cpu.items():
        print(f"  {step:12} {1e6 * seconds:9.1f} us")


if __name__ == "__main__":
    main()
