"""The SpamAssassin check's native eval: tests and relays against SpamAssassin itself.

    .venv/bin/python bench/sa_eval_agreement.py [--messages 300] [--seed 12]

Takes ``--messages`` spam and as many ham from the corpus's LABELS.tsv
(a seeded sample), runs each through a private Debian spamd (local tests
only, ``-L``; one child, on a free loopback port, with its metadata debug
log) and through our rules (re only, no Hyperscan compile). Prints, for
every scored rule an eval of ours computes, how often both, only we, only
SpamAssassin, or neither fired, and the agreement; then how many messages
got the same four X-Spam-Relays-* strings as SpamAssassin's. Our evals'
CPU per message is printed too.

The corpus has no envelope: as SpamAssassin does, the envelope sender is
read from Return-Path for our side.
"""

from __future__ import annotations

import argparse
import email.utils
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import stop  # noqa: E402
from smtpproxy.common import config  # noqa: E402
from smtpproxy.scan.message import parse  # noqa: E402
from smtpproxy.scan.spamassassin import evals  # noqa: E402
from smtpproxy.scan.spamassassin.check import SpamAssassinCheck, _Texts  # noqa: E402
from tests.support.net import free_port, port_open  # noqa: E402
from tests.support.postfix import wait_until  # noqa: E402

LABELS = ROOT.parent / "shared" / "corpora" / "spam-ham" / "LABELS.tsv"
RELAY_PARTS = ("Trusted", "Untrusted", "Internal", "External")
RELAY_LOG_RE = re.compile(r"dbg: metadata: X-Spam-Relays-(Trusted|Untrusted|Internal|External): ?(.*)$")


def sample(n: int, seed: int) -> list[Path]:
    rows = [line.rstrip("\n").split("\t") for line in LABELS.read_text().splitlines()
            if line and not line.startswith("#")]
    rng = random.Random(seed)
    picked = []
    for label in ("spam", "ham"):
        paths = [r[0] for r in rows if r[1] == label]
        picked += rng.sample(paths, min(n, len(paths)))
    return [LABELS.parent / p for p in picked]


def run_spamassassin(files: list[Path], tmp: Path) -> tuple[list[set[str]], list[dict[str, str]]]:
    """SpamAssassin's tests per message, and its four relay strings per message."""
    port = free_port()
    log = tmp / "spamd.log"
    spamd = subprocess.Popen(
        ["spamd", "-L", "-x", "-D", "metadata", "-i", "127.0.0.1", "-p", str(port), "-A", "127.0.0.1",
         "--max-children=1", "--min-children=1", "-u", "nobody", "--virtual-config-dir", str(tmp / "sa"),
         "-s", str(log)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: port_open(port) or spamd.poll() is not None, 120, "spamd")
        if spamd.poll() is not None:
            raise SystemExit("spamd exited at start")
        start = len(log.read_text(encoding="latin-1").splitlines())
        tests = []
        for path in files:
            out = subprocess.run(["spamc", "-p", str(port), "-y", "-s", "4000000"], input=path.read_bytes(),
                                 capture_output=True, timeout=120).stdout.decode().strip()
            tests.append(set(out.split(",")) if out else set())
    finally:
        stop(spamd, 30)
    records: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in log.read_text(encoding="latin-1").splitlines()[start:]:
        m = RELAY_LOG_RE.search(line)
        if m:
            current[m.group(1)] = m.group(2).strip()
            if m.group(1) == "External":
                records.append(current)
                current = {}
    return tests, records[-len(files):] if len(records) >= len(files) else [{}] * len(files)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=300, help="spam messages, and as many ham")
    parser.add_argument("--seed", type=int, default=12)
    args = parser.parse_args()
    files = sample(args.messages, args.seed)
    with tempfile.TemporaryDirectory(prefix="sa-evals-") as tmp:
        (Path(tmp) / "sa").mkdir()
        sa_tests, sa_relays = run_spamassassin(files, Path(tmp))
        cfg = config.load(None, {"scan.spamassassin.enabled": True, "state_dir": str(Path(tmp) / "state")})
        check = SpamAssassinCheck(cfg, use_hyperscan=False)
    scored = [r for r in check.eval_rules if not r.name.startswith("__") and check.rules.score(r.name)]
    table: dict[str, Counter] = defaultdict(Counter)
    relays_same = 0
    cpu = 0.0
    for path, theirs, their_relays in zip(files, sa_tests, sa_relays, strict=True):
        msg = parse(path.read_bytes())
        envfrom = email.utils.parseaddr(msg.header("Return-Path") or "")[1]
        texts = _Texts(msg, envfrom, check.max_bytes)
        started = time.process_time()
        ev = evals.EvalInput(msg, texts.header_values, check.freemail, texts.relays,
                             lambda t=texts: [line.decode("utf-8", "replace") for line in t.body_lines()])
        ours = {r.name for r in scored if evals.run(ev, r.text, r.args)}
        cpu += time.process_time() - started
        for rule in scored:
            table[rule.name][(rule.name in ours, rule.name in theirs)] += 1
        chain = texts.relays()
        relays_same += all(chain.header(f"X-Spam-Relays-{part}") == their_relays.get(part)
                           for part in RELAY_PARTS)
    print(f"{len(files)} messages; our evals: {1000 * cpu / len(files):.3f} ms CPU per message "
          f"(relay parsing included)")
    print(f"{'rule':28} {'eval':40} {'both':>5} {'ours':>5} {'SA':>5} {'neither':>7} {'agree':>7}")
    for name in sorted(table):
        c = table[name]
        agree = 100 * (c[(True, True)] + c[(False, False)]) / sum(c.values())
        fn = check.rules.rules[name].text
        print(f"{name:28} {fn:40} {c[(True, True)]:5} {c[(True, False)]:5} {c[(False, True)]:5} "
              f"{c[(False, False)]:7} {agree:6.1f}%")
    print(f"X-Spam-Relays-* identical to SpamAssassin's: {relays_same} of {len(files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
