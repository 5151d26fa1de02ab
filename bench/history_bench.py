#!/usr/bin/env python3
"""Proxy+scan throughput with the history on and off, in the same run.

    .venv/bin/python bench/history_bench.py [--messages 2000] [--rounds 3] [--redis]

One private Postfix and one proxy daemon with scanning on (DNS answered by a
local server); the history is switched off and on by reloading the proxy
(SIGHUP) between rounds, alternating, so both see the same machine state.
Throughput comes from smtp-source (5 KB messages) through the before-filter
smtpd; each figure is the best of --rounds. The ratio on/off is what
docs/controller.md quotes (target >= 0.95). At the end the controller's
/stat says how many rows were written and how many dropped (the queue was
full: a row is never waited for). --redis: the store is a redis-server
(the shared-history case) instead of SQLite.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import MESSAGE_SIZE, drain, smtp_source  # noqa: E402
from tests.support.dns_server import DnsTestServer  # noqa: E402
from tests.support.net import free_port  # noqa: E402
from tests.support.pipeline import Pipeline  # noqa: E402
from tests.support.postfix import wait_until  # noqa: E402
from tests.support.redis import start_redis  # noqa: E402


def set_history(p: Pipeline, on: bool) -> None:
    """Rewrite the proxy's file with history.enabled = on and reload it."""
    text = p.proxy.config_text + f"\n[history]\nenabled = {'true' if on else 'false'}\n"
    p.proxy.config.write_text(text)
    before = p.proxy.log_text().count("configuration reloaded")
    p.proxy.signal(1)  # SIGHUP
    wait_until(lambda: p.proxy.log_text().count("configuration reloaded") > before, 30, "reload")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--redis", action="store_true", help="the store on a redis-server")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="history-bench-") as tmp:
        dns = DnsTestServer({}).start()
        redis = start_redis(f"{tmp}/redis") if args.redis else None
        ctl_port = free_port()
        store = f'[store]\nurl = "{redis.url}"\n' if redis else ""
        p = Pipeline(Path(tmp), proxy_extra="max_sessions = 500", scan=True, extra_config=f"""
[dns]
nameserver = "{dns.nameserver}"
{store}
[controller]
enabled = true
listen = "127.0.0.1:{ctl_port}"
""")
        p.start()
        try:
            p.postfix.params["default_transport"] = "discard"
            p.postfix.params["relayhost"] = ""
            p.postfix.reload()
            time.sleep(1)
            smtp_source(p.inbound_port, 200, 10)  # warm-up
            drain(p)
            best = {False: 0.0, True: 0.0}
            for _ in range(args.rounds):
                for on in (False, True):
                    set_history(p, on)
                    rate = smtp_source(p.inbound_port, args.messages, args.concurrency)
                    best[on] = max(best[on], rate)
                    drain(p)
            time.sleep(1)  # the last rows are written
            with urllib.request.urlopen(f"http://127.0.0.1:{ctl_port}/stat", timeout=10) as r:
                history = json.load(r)["history"]
        finally:
            p.stop()
            dns.stop()
            if redis:
                redis.stop()

    print(f"history benchmark: {MESSAGE_SIZE // 1024} KB messages, scanning on, "
          f"concurrency {args.concurrency}, best of {args.rounds} rounds, store "
          f"{'redis' if args.redis else 'sqlite'}")
    print(f"history off: {best[False]:.0f} msg/s; history on: {best[True]:.0f} msg/s; "
          f"ratio on/off {best[True] / best[False]:.3f}")
    print(f"rows written {history['written']}, dropped {history['dropped']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
