"""How long other sessions wait while the proxy scans a message of hostile structure.

A heartbeat task on the event loop (a 5 ms sleep, as a NOOP's reply would
wait for the loop) runs while the scan hook scans one ~10 MB message and the
delivery pipeline edits its headers: 1.3 million header fields, or 300,000
MIME parts, or 1.3 million fields of a name the proxy removes
(tests/support/hostile.py). "before" runs the same code with the
parse bounds lifted and the parse on the loop (what the proxy did); "after"
as shipped (scan/message.py's bounds, big messages parsed and edited in
a thread).
Prints the worst heartbeat latency, the scan time and the defects seen.

    .venv/bin/python bench/hostile_bench.py [--scale 1.0]

The goal: worst latency under 250 ms after.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smtpproxy import delivery as delivery_module  # noqa: E402
from smtpproxy.common import config  # noqa: E402
from smtpproxy.delivery import Delivery  # noqa: E402
from smtpproxy.scan import hook as hook_module  # noqa: E402
from smtpproxy.scan import message as message_module  # noqa: E402
from smtpproxy.scan.hook import EngineHook, build_engine  # noqa: E402
from smtpproxy.transaction import ClientInfo, Transaction  # noqa: E402
from tests.support.hostile import header_flood, mime_flood  # noqa: E402

BOUNDS = ("MAX_HEADER_FIELDS", "MAX_BOUNDARY_LINES", "MAX_CONTAINERS", "MAX_LINES")


@contextlib.contextmanager
def unbounded():
    saved = {name: getattr(message_module, name) for name in BOUNDS}
    inline = hook_module.INLINE_PARSE_MAX_BYTES, delivery_module.INLINE_EDIT_MAX_BYTES
    for name in BOUNDS:
        setattr(message_module, name, 10**9)
    hook_module.INLINE_PARSE_MAX_BYTES = delivery_module.INLINE_EDIT_MAX_BYTES = 10**12
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(message_module, name, value)
        hook_module.INLINE_PARSE_MAX_BYTES, delivery_module.INLINE_EDIT_MAX_BYTES = inline


async def scan_once(raw: bytes) -> tuple[float, float, str]:
    cfg = config.load(None, {})
    hook = EngineHook(cfg, build_engine(cfg), None, None, "mx.example.test")
    txn = Transaction("S", "inbound", "inbound", ClientInfo(addr="192.0.2.1", helo="x.example"),
                      "a@example.org", [], ["b@example.net"], [[]], raw)
    worst = 0.0
    done = False

    async def heartbeat():
        nonlocal worst
        while not done:
            t = time.perf_counter()
            await asyncio.sleep(0.005)
            worst = max(worst, time.perf_counter() - t - 0.005)

    beat = asyncio.create_task(heartbeat())
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    verdict = await hook.scan(txn)
    await Delivery(cfg, hook, None, None, "mx.example.test").edited(txn, verdict)
    elapsed = time.perf_counter() - started
    done = True
    await beat
    bad = [s for s in verdict.symbols if s.startswith("MIME_BAD")]
    return worst, elapsed, ",".join(bad) or "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="1.0: the audit's sizes (~10 MB)")
    args = parser.parse_args()
    cases = [("1.3M header fields", header_flood(int(1_300_000 * args.scale))),
             ("1.3M X-Spam fields", header_flood(int(1_300_000 * args.scale), b"X-Spam: Yes")),
             ("300k MIME parts", mime_flood(int(300_000 * args.scale)))]
    asyncio.run(scan_once(header_flood(10)))  # one-time loads (public suffix list) off the figures
    print(f"{'message':22} {'MB':>5} {'':7} {'worst heartbeat':>16} {'scan+edit':>10}  symbols")
    for name, raw in cases:
        for label, ctx in (("before", unbounded()), ("after", contextlib.nullcontext())):
            with ctx:
                worst, elapsed, bad = asyncio.run(scan_once(raw))
            print(f"{name:22} {len(raw) / 1e6:5.1f} {label:7} {worst * 1000:13.0f} ms {elapsed:8.2f} s  {bad}")


if __name__ == "__main__":
    main()
