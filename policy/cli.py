"""smtpproxy-policy: run the daemon, and look after its state.

  smtpproxy-policy run [-c FILE] [--listen HOST:PORT|unix:PATH] [--store URL] [--state-dir DIR]
  smtpproxy-policy configtest [-c FILE]
  smtpproxy-policy greylist list [--limit N]
  smtpproxy-policy greylist show|delete CLIENT_ADDRESS SENDER RECIPIENT
  smtpproxy-policy greylist show-client|delete-client CLIENT_ADDRESS
  smtpproxy-policy whitelist-client CLIENT_ADDRESS [--days N]
  smtpproxy-policy ratelimit list [--limit N]
  smtpproxy-policy ratelimit show|delete RULE KEY_VALUE

Admin commands use the same configuration (store URL, key prefix, client
network prefixes) as the daemon, so they address the keys it uses; keys are
hashed, so entries are named by the attributes they were built from.
``whitelist-client`` marks the client's network as auto-whitelisted in the
store, which every daemon sharing that store sees at once.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time
from collections.abc import Callable

from policy import greylist, ratelimit
from smtpproxy.common import log as logsetup
from smtpproxy.common import runtime
from smtpproxy.common.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load
from smtpproxy.common.store import Store, StoreError, open_store
from smtpproxy.common.supervisor import serve_with_workers
from smtpproxy.common.version import version
from smtpproxy.common.workers import Endpoint

PROGRAM = "smtpproxy-policy"


def _config(args: argparse.Namespace) -> tuple[Config, Callable[[], Config]]:
    """Like smtpproxy's: -c, else $SMTPPROXY_CONFIG, else the default file if
    it exists, else built-in defaults; flags on top."""
    path = args.config or os.environ.get("SMTPPROXY_CONFIG") or None
    if path is None and os.path.exists(DEFAULT_CONFIG_PATH):
        path = DEFAULT_CONFIG_PATH
    overrides = {}
    if getattr(args, "listen", None):
        overrides["policy.listen"] = args.listen
    if getattr(args, "store", None):
        overrides["store.url"] = args.store
    if getattr(args, "state_dir", None):
        overrides["state_dir"] = args.state_dir
    return load(path, overrides), lambda: load(path, overrides)


def _cmd_run(args: argparse.Namespace) -> int:
    from policy.server import PolicyService

    cfg, reload_config = _config(args)
    logsetup.setup(cfg.log, PROGRAM)
    # Everything loaded so far lives as long as the process: keep it out of
    # the cyclic GC's full collections, which otherwise show up as latency spikes.
    gc.collect()
    gc.freeze()

    def serve_one(cfg: Config) -> int:
        # uvloop when installed (runtime.run), asyncio's own loop otherwise.
        return runtime.run(runtime.serve(PROGRAM, cfg, PolicyService, reload_config))

    return serve_with_workers(PROGRAM, cfg, "policy.workers", cfg.policy.workers, _endpoints, reload_config,
                              lambda c: c.policy.drain_timeout_s, serve_one)


def _endpoints(cfg: Config) -> list[Endpoint]:
    """The addresses the parent of several workers binds for them."""
    listen = cfg.policy.listen
    out = [Endpoint("policy.listen", listen,
                    int(cfg.policy.socket_mode, 8) if listen.startswith("unix:") else None,
                    per_worker=True)]
    if cfg.policy.metrics_listen:
        out.append(Endpoint("policy.metrics_listen", cfg.policy.metrics_listen))
    return out


def _cmd_configtest(args: argparse.Namespace) -> int:
    _config(args)
    print("configuration OK")
    return 0


async def _with_store(cfg: Config, fn) -> int:
    store = open_store(cfg.store, cfg.state_dir)
    await store.open()
    try:
        return await fn(store)
    finally:
        await store.close()


def _fmt_fields(fields: dict[str, str]) -> str:
    out = []
    now = time.time()
    for k, v in sorted(fields.items()):
        if k in ("first", "seen", "last"):
            try:
                v = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(v))) + f" ({now - float(v):.0f}s ago)"
            except ValueError:
                pass
        out.append(f"{k}={v}")
    return " ".join(out)


def _greylist_keys(cfg: Config, store: Store, client: str, sender: str = "", rcpt: str = ""):
    g = cfg.policy.greylist
    network = greylist.client_network(client, g.client_prefix_v4, g.client_prefix_v6)
    return network, *greylist.keys(store, network, greylist.normalize_sender(sender), rcpt)


async def _show(store: Store, key: str) -> bool:
    fields = await store.hgetall(key)
    if not fields:
        print(f"{key}: not found")
        return False
    ttl = await store.ttl(key)
    print(f"{key}: {_fmt_fields(fields)} ttl={ttl:.0f}s" if ttl else f"{key}: {_fmt_fields(fields)}")
    return True


def _cmd_greylist(args: argparse.Namespace) -> int:
    cfg, _ = _config(args)

    async def go(store: Store) -> int:
        if args.action == "list":
            n = 0
            async for key in store.scan(store.prefix + "{gl:*", args.limit):
                await _show(store, key)
                n += 1
            print(f"{n} entries" + (" (limit reached)" if n >= args.limit else ""))
            return 0
        network, triplet_key, client_key = _greylist_keys(
            cfg, store, args.client, getattr(args, "sender", ""), getattr(args, "recipient", "")
        )
        key = triplet_key if args.action in ("show", "delete") else client_key
        print(f"client network {network}")
        if args.action.startswith("show"):
            return 0 if await _show(store, key) else 1
        deleted = await store.delete(key)
        print("deleted" if deleted else "not found")
        return 0 if deleted else 1

    return asyncio.run(_with_store(cfg, go))


def _cmd_whitelist_client(args: argparse.Namespace) -> int:
    cfg, _ = _config(args)
    g = cfg.policy.greylist

    async def go(store: Store) -> int:
        network, triplet_key, client_key = _greylist_keys(cfg, store, args.client)
        # An auto-whitelist entry at its threshold: greylisting checks it first.
        if not g.awl_deliveries:
            print("policy.greylist.awl_deliveries is 0: add the client to a whitelist map instead",
                  file=sys.stderr)
            return 1
        now = time.time()
        await store.hset(client_key, {"count": g.awl_deliveries, "last": now, "seen": now},
                         args.days * 86400.0)
        print(f"client network {network} whitelisted for {args.days:g} days")
        return 0

    return asyncio.run(_with_store(cfg, go))


def _cmd_ratelimit(args: argparse.Namespace) -> int:
    cfg, _ = _config(args)
    rules = {r.name: r for r in cfg.policy.rate_limits}

    async def go(store: Store) -> int:
        if args.action == "list":
            n = 0
            async for key in store.scan(store.prefix + "{rl:*", args.limit):
                await _show(store, key)
                n += 1
            print(f"{n} buckets" + (" (limit reached)" if n >= args.limit else ""))
            return 0
        if args.rule not in rules:
            print(f"no rate-limit rule named {args.rule!r} (have: {', '.join(rules) or 'none'})",
                  file=sys.stderr)
            return 2
        key = ratelimit.bucket_key(store, args.rule, args.value.lower())
        if args.action == "show":
            if not await _show(store, key):
                return 1
            now = time.time()
            for count, period in rules[args.rule].parsed_limits:
                fields = await store.hgetall(key)
                tat = float(fields.get(f"{count}/{period:g}", 0.0))
                used = max(0.0, tat - now) / (period / count)
                print(f"  {count}/{period:g}s: about {used:.1f} of {count} in use")
            return 0
        deleted = await store.delete(key)
        print("deleted" if deleted else "not found")
        return 0 if deleted else 1

    return asyncio.run(_with_store(cfg, go))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description="Postfix policy daemon: greylisting and rate limits")
    parser.add_argument("--version", action="version", version=f"{PROGRAM} {version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", help="configuration file (default $SMTPPROXY_CONFIG, "
                       f"else {DEFAULT_CONFIG_PATH} if present)")
        p.add_argument("--store", help="store URL, overrides store.url")
        p.add_argument("--state-dir", help="overrides state_dir (where the SQLite store lives)")

    p = sub.add_parser("run", help="run the daemon in the foreground")
    common(p)
    p.add_argument("--listen", help="HOST:PORT or unix:PATH, overrides policy.listen")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("configtest", help="load and check the configuration")
    common(p)
    p.set_defaults(func=_cmd_configtest)

    p = sub.add_parser("greylist", help="show or delete greylist entries")
    common(p)
    gsub = p.add_subparsers(dest="action", required=True)
    q = gsub.add_parser("list")
    q.add_argument("--limit", type=int, default=100)
    for name in ("show", "delete"):
        q = gsub.add_parser(name)
        q.add_argument("client")
        q.add_argument("sender")
        q.add_argument("recipient")
    for name in ("show-client", "delete-client"):
        q = gsub.add_parser(name)
        q.add_argument("client")
    p.set_defaults(func=_cmd_greylist)

    p = sub.add_parser("whitelist-client", help="never greylist this client's network")
    common(p)
    p.add_argument("client")
    p.add_argument("--days", type=float, default=35.0)
    p.set_defaults(func=_cmd_whitelist_client)

    p = sub.add_parser("ratelimit", help="show or delete rate-limit buckets")
    common(p)
    rsub = p.add_subparsers(dest="action", required=True)
    q = rsub.add_parser("list")
    q.add_argument("--limit", type=int, default=100)
    for name in ("show", "delete"):
        q = rsub.add_parser(name)
        q.add_argument("rule")
        q.add_argument("value", help="the key value, parts joined with |")
    p.set_defaults(func=_cmd_ratelimit)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"{PROGRAM}: configuration error: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"{PROGRAM}: store error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
