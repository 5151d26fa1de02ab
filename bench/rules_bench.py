#!/usr/bin/env python3
"""Untrained accuracy and every rule's hit rates: smtpproxy vs SpamAssassin vs rspamd, same run.

    .venv/bin/python bench/rules_bench.py [--limit N] [--seed 5] [--skip-sa] [--skip-rspamd]
                                          [--markdown docs/rules-table.md]

What catches spam before anything was learned. Every message of the
labelled corpus (../shared/corpora/spam-ham, or a random --limit of them)
is scanned by each system with nothing trained and nothing leaving the
machine: DNS is a local server answering NXDOMAIN for every name (so no
DNSBL lists anything, and SPF/DKIM/DMARC find no records).

- smtpproxy: the shipped engine with its default configuration plus the
  SpamAssassin rules check on (the system's rule files), no store (so no
  Bayes), the client taken from the first Received header naming a public
  address (what the MX facing the sender saw, as XFORWARD would tell us).
- SpamAssassin: Debian's spamd -L (no network tests), Bayes off
  (use_bayes 0), the stock rules.
- rspamd: Debian's rspamd with its network modules off (bench/common.py),
  no Bayes learned.

Printed per system: ROC AUC of the score (spam vs ham), spam recall at the
lowest threshold keeping ham false positives at or under 0.5%, and recall /
false positives at the system's own add-header threshold (6 for smtpproxy and
rspamd, 5 for SpamAssassin). Then smtpproxy's symbols: hits on spam and on
ham, the score, and a flag on every positive-scored symbol firing on more
than 1% of ham (such a rule must be re-scored or dropped). --markdown writes
that table for docs/rules.md.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    RSPAMC_RESULT,
    apt_install,
    running_spamd,
    spamd_site,
    spamd_symbols,
    start_rspamd,
    stop,
)
from smtpproxy.common import config  # noqa: E402
from smtpproxy.common.dns import Resolver  # noqa: E402
from smtpproxy.common.runtime import run  # noqa: E402
from smtpproxy.scan.checks.base import CheckContext  # noqa: E402
from smtpproxy.scan.hook import build_engine  # noqa: E402
from smtpproxy.scan.message import parse  # noqa: E402
from smtpproxy.transaction import ClientInfo  # noqa: E402
from tests.support.dns_server import DnsTestServer  # noqa: E402
from tests.support.net import port_open  # noqa: E402
from tests.support.postfix import wait_until  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpora" / "spam-ham"
SPAM, HAM = "spam", "ham"
MAX_HAM_FP = 0.005
# The topmost Received header's "from HELO (rdns [IP])", as Postfix and sendmail write it.
RECEIVED_FROM = re.compile(
    r"from\s+(?P<helo>\S+)\s+\((?:(?P<rdns>[^\s\[\]()]+)\s+)?\[(?:IPv6:)?(?P<ip>[0-9a-fA-F.:]+)\]",
    re.I)


def corpus(limit: int | None, seed: int) -> list[tuple[Path, str]]:
    rows = []
    for line in (CORPUS / "LABELS.tsv").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        path, label, _source = line.split("\t")
        rows.append((CORPUS / path, label))
    rows.sort()
    random.Random(seed).shuffle(rows)
    return rows[:limit] if limit else rows


# ---------------------------------------------------------------- figures


def roc_auc(scored: list[tuple[str, float]]) -> float:
    """The probability that a random spam scores above a random ham (ties count half)."""
    ordered = sorted(scored, key=lambda s: s[1])
    n_spam = sum(1 for label, _ in scored if label == SPAM)
    n_ham = len(scored) - n_spam
    if not n_spam or not n_ham:
        return float("nan")
    rank_sum, i = 0.0, 0
    while i < len(ordered):
        j = i
        while j < len(ordered) and ordered[j][1] == ordered[i][1]:
            j += 1
        mean_rank = (i + 1 + j) / 2
        rank_sum += mean_rank * sum(1 for label, _ in ordered[i:j] if label == SPAM)
        i = j
    return (rank_sum - n_spam * (n_spam + 1) / 2) / (n_spam * n_ham)


def recall_at_fp(scored: list[tuple[str, float]], max_fp: float) -> tuple[float, float]:
    """(spam recall, threshold) at the lowest threshold with ham FP rate <= max_fp."""
    ham = sorted((s for label, s in scored if label == HAM), reverse=True)
    spam = [s for label, s in scored if label == SPAM]
    allowed = int(max_fp * len(ham))
    # Scores above the (allowed+1)-th highest ham score flag at most `allowed` hams.
    threshold = ham[allowed] if allowed < len(ham) else float("-inf")
    threshold = threshold + 1e-9
    return 100.0 * sum(1 for s in spam if s >= threshold) / max(1, len(spam)), threshold


def figures(scored: list[tuple[str, float]], add: float) -> dict:
    spam = [s for label, s in scored if label == SPAM]
    ham = [s for label, s in scored if label == HAM]
    recall, threshold = recall_at_fp(scored, MAX_HAM_FP)
    return {"auc": roc_auc(scored), "recall_at_fp": recall, "threshold_at_fp": threshold,
            "recall_add": 100.0 * sum(1 for s in spam if s >= add) / max(1, len(spam)),
            "fp_add": 100.0 * sum(1 for s in ham if s >= add) / max(1, len(ham)),
            "n_spam": len(spam), "n_ham": len(ham)}


# ---------------------------------------------------------------- smtpproxy


def client_of(msg) -> ClientInfo:
    """The first hop from a public address, reading the Received chain from the top.

    The corpus's top hops are the recipients' own (fetchmail from localhost,
    relays on private addresses); the MX that faced the sender is the first
    hop from outside, as SpamAssassin's trust path finds it.
    """
    for received in msg.header_all("received"):
        match = RECEIVED_FROM.search(received)
        if match is None:
            continue
        try:
            ip = ipaddress.ip_address(match.group("ip"))
        except ValueError:
            continue
        if ip.is_global:
            return ClientInfo(name=match.group("rdns") or "unknown", addr=str(ip),
                              helo=match.group("helo"))
    return ClientInfo()


def bench_smtpproxy(rows, state_dir: Path, dns: DnsTestServer) -> dict:
    cfg = config.load(None, {"dns.nameserver": dns.nameserver, "log.level": "error",
                             "state_dir": str(state_dir),
                             "scan.spamassassin.enabled": True})
    engine = build_engine(cfg)
    for check in engine.checks:
        if getattr(check, "name", "") == "spamassassin" and hasattr(check, "matcher"):
            check.matcher.wait(1800)
    out: dict = {}
    hits: dict[str, Counter] = {SPAM: Counter(), HAM: Counter()}
    errors = Counter()

    async def main() -> None:
        resolver = Resolver(cfg.dns)
        scored = []
        cpu = time.process_time()
        for path, label in rows:
            msg = parse(path.read_bytes())
            ctx = CheckContext(message=msg, client=client_of(msg), mail_from=msg.from_address,
                               rcpt_tos=["user@example.net"], profile="inbound", resolver=resolver)
            result = await engine.scan(ctx)
            scored.append((label, result.score))
            for name in result.symbols:
                hits[label][name] += 1
            if "CHECK_ERROR" in result.symbols:
                errors[path.name] += 1
        out["cpu_ms"] = (time.process_time() - cpu) / max(1, len(rows)) * 1000
        out["scored"] = scored
        resolver.close()

    run(main())
    out.update(figures(out["scored"], cfg.scan.actions.add_header))
    out["hits"] = hits
    out["check_errors"] = errors
    out["scores"] = {name: d.score for name, d in engine.symbols.items()}
    return out


# ---------------------------------------------------------------- SpamAssassin

SA_LOCAL_CF = """\
use_bayes 0
bayes_auto_learn 0
use_auto_whitelist 0
required_score 5.0
"""


def bench_spamassassin(rows, tmp: Path) -> dict:
    problem = apt_install(["spamassassin", "spamc"], False)
    if problem:
        return {"skipped": problem}
    try:
        with running_spamd(spamd_site(tmp / "sa-site", SA_LOCAL_CF)) as port:
            def one(item):
                path, label = item
                score, _rules = spamd_symbols(port, path.read_bytes())
                return label, score

            with ThreadPoolExecutor(4) as pool:
                scored = list(pool.map(one, rows))
    except RuntimeError as exc:
        return {"skipped": str(exc)}
    out = {"scored": scored}
    out.update(figures(scored, 5.0))
    return out


# ---------------------------------------------------------------- rspamd

def bench_rspamd(rows, tmp: Path, dns: DnsTestServer) -> dict:
    problem = apt_install(["rspamd"], False)
    if problem:
        return {"skipped": problem}
    proc, port, cport = start_rspamd(tmp / "rspamd", dns.nameserver)
    try:
        wait_until(lambda: (port_open(port) and port_open(cport)) or proc.poll() is not None, 120, "rspamd")
        if proc.poll() is not None:
            return {"skipped": "rspamd exited at start"}
        label_of = {str(p): label for p, label in rows}
        scored = []
        files = [str(p) for p, _ in rows]
        for i in range(0, len(files), 500):
            result = subprocess.run(["rspamc", "-h", f"127.0.0.1:{port}", "-t", "60", "-n", "4",
                                     *files[i:i + 500]], capture_output=True, text=True, timeout=3600)
            scored += [(label_of[m.group("file")], float(m.group("score")))
                       for m in RSPAMC_RESULT.finditer(result.stdout)]
    finally:
        stop(proc, 30)
    out: dict = {"scored": scored}
    if len(scored) != len(rows):
        out["note"] = f"rspamc answered for {len(scored)} of {len(rows)} messages"
    out.update(figures(scored, 6.0))
    return out


# ---------------------------------------------------------------- report


def symbol_table(result: dict) -> list[tuple[str, float, float, float, bool]]:
    """(symbol, score, % of spam, % of ham, flagged) for every symbol that fired."""
    hits = result["hits"]
    n_spam, n_ham = max(1, result["n_spam"]), max(1, result["n_ham"])
    scores = result["scores"]
    rows = []
    for name in set(hits[SPAM]) | set(hits[HAM]):
        score = scores.get(name, 0.0) or 0.0
        spam = 100.0 * hits[SPAM][name] / n_spam
        ham = 100.0 * hits[HAM][name] / n_ham
        # SpamAssassin's informational rules score 0.001: not a score that counts.
        rows.append((name, score, spam, ham, score >= 0.01 and ham > 1.0))
    rows.sort(key=lambda r: (-r[2] + r[3], r[0]))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, help="a random sample of this many messages")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--skip-sa", action="store_true")
    parser.add_argument("--skip-rspamd", action="store_true")
    parser.add_argument("--markdown", help="write the symbol table here (Markdown)")
    parser.add_argument("--state-dir", help="keep the compiled rule databases here between runs "
                        "(default: a fresh directory, so the first compile is part of the run)")
    args = parser.parse_args()
    rows = corpus(args.limit, args.seed)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="rules-bench-") as tmp, DnsTestServer() as dns:
        os.chmod(tmp, 0o755)
        start = time.perf_counter()
        state_dir = Path(args.state_dir) if args.state_dir else Path(tmp) / "smtpproxy"
        results["smtpproxy"] = bench_smtpproxy(rows, state_dir, dns)
        print(f"smtpproxy scanned {len(rows)} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        if not args.skip_sa:
            results["spamassassin -L"] = bench_spamassassin(rows, Path(tmp))
        if not args.skip_rspamd:
            results["rspamd"] = bench_rspamd(rows, Path(tmp), dns)
    n_spam = sum(1 for _, label in rows if label == SPAM)
    print(f"\n{len(rows)} corpus messages ({n_spam} spam, {len(rows) - n_spam} ham), untrained, "
          "network off")
    print(f"{'system':18s} {'ROC AUC':>8s} {'recall@0.5%FP':>14s} {'(threshold)':>12s} "
          f"{'recall@add':>11s} {'FP@add':>7s}")
    for name, r in results.items():
        if "skipped" in r:
            print(f"{name:18s} skipped: {r['skipped']}")
            continue
        print(f"{name:18s} {r['auc']:8.3f} {r['recall_at_fp']:13.1f}% {r['threshold_at_fp']:12.2f} "
              f"{r['recall_add']:10.1f}% {r['fp_add']:6.2f}%" + (f"  ({r['note']})" if "note" in r else ""))
    sa = results.get("spamassassin -L", {})
    ours = results["smtpproxy"]
    if "recall_at_fp" in sa and sa["recall_at_fp"]:
        print(f"smtpproxy recall@0.5%FP / SpamAssassin's: {ours['recall_at_fp'] / sa['recall_at_fp']:.2f}x")
    print(f"smtpproxy CPU per message (every check, the rules included): {ours['cpu_ms']:.2f} ms")
    errors = ours["check_errors"]
    print(f"messages with a CHECK_ERROR: {len(errors)}" + (f" ({', '.join(list(errors)[:5])})" if errors else ""))
    table = symbol_table(ours)
    flagged = [r for r in table if r[4]]
    print(f"\n{len(table)} symbols fired; positive score on > 1% of ham: {len(flagged)}")
    print(f"{'symbol':34s} {'score':>7s} {'spam %':>7s} {'ham %':>7s}")
    for name, score, spam, ham, flag in table:
        print(f"{name:34s} {score:7.3f} {spam:7.2f} {ham:7.2f}" + ("  << ham > 1%" if flag else ""))
    if args.markdown:
        lines = ["| symbol | score | spam % | ham % |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {name}{' (!)' if flag else ''} | {score:.2f} | {spam:.2f} | {ham:.2f} |"
                  for name, score, spam, ham, flag in table]
        Path(args.markdown).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    sys.exit(main())
