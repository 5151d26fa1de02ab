"""The ``smtpproxy`` command: the content-filter daemon and its admin tools.

    smtpproxy run [-c FILE] [--listen HOST:PORT] [--downstream HOST:PORT] [--state-dir DIR]
    smtpproxy configtest [-c FILE]
    smtpproxy configdump [-c FILE]
    smtpproxy scan [-c FILE] [--ip IP] [--helo NAME] [--from ADDR] [--rcpt ADDR ...]
                   [--dns HOST:PORT] [--json] FILE|DIR|-

Without -c, $SMTPPROXY_CONFIG or /etc/smtpproxy/smtpproxy.toml is read when
it exists; otherwise the built-in defaults apply (listen 127.0.0.1:10025,
re-inject to 127.0.0.1:10026). Command-line flags override the file; with
several listeners, --listen and --downstream change the first one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from smtpproxy import canary as canary_cli
from smtpproxy.cliconfig import config_path, ensure_state_dir, load_with_flags
from smtpproxy.common import config as config_mod
from smtpproxy.common import log as logsetup
from smtpproxy.common.config import Config, ConfigError
from smtpproxy.common.dns import Resolver
from smtpproxy.common.runtime import run, serve
from smtpproxy.common.supervisor import serve_with_workers
from smtpproxy.common.version import version
from smtpproxy.controller import cli as controller_cli
from smtpproxy.daemon import ProxyService, endpoints
from smtpproxy.doctor import cli as doctor_cli
from smtpproxy.scan.bayes import cli as bayes_cli
from smtpproxy.scan.checks.base import CheckContext
from smtpproxy.scan.hook import build_engine
from smtpproxy.scan.message import parse
from smtpproxy.sign import cli as sign_cli
from smtpproxy.sign.setup import build_signer, key_warnings
from smtpproxy.transaction import ClientInfo

PROGRAM = "smtpproxy"


def cmd_run(args: argparse.Namespace) -> int:
    cfg = load_with_flags(args)
    ensure_state_dir(cfg)
    logsetup.setup(cfg.log, PROGRAM)

    def reload_config() -> Config:
        return load_with_flags(args)

    def serve_one(cfg: Config) -> int:
        return run(serve(PROGRAM, cfg, ProxyService, reload_config))

    return serve_with_workers(PROGRAM, cfg, "proxy.workers", cfg.proxy.workers, endpoints, reload_config,
                              lambda c: c.proxy.drain_timeout_s, serve_one)


def cmd_configtest(args: argparse.Namespace) -> int:
    cfg = load_with_flags(args)
    if cfg.scan.enabled:
        engine = build_engine(cfg)  # the symbols table and every check's symbols
        for check in engine.checks:  # what a check loaded and skipped (SpamAssassin rules)
            for line in getattr(check, "report", list)():
                print(line)
    build_signer(cfg)  # every signing key loads, or a ConfigError names it
    for warning in key_warnings(cfg):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{config_path(args.config) or '(built-in defaults)'}: configuration OK")
    return 0


def cmd_configdump(args: argparse.Namespace) -> int:
    sys.stdout.write(config_mod.dump(load_with_flags(args)))
    return 0


def _message_files(target: str) -> list[str]:
    if target == "-":
        return ["-"]
    if os.path.isdir(target):
        return sorted(
            os.path.join(root, name)
            for root, _, names in os.walk(target) for name in names
        )
    return [target]


def cmd_scan(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {"log.level": "error"}
    if args.dns:
        overrides["dns.nameserver"] = args.dns
    if args.state_dir:
        overrides["state_dir"] = args.state_dir
    cfg = config_mod.load(config_path(args.config), overrides)
    logsetup.setup(cfg.log, PROGRAM)
    engine = build_engine(cfg)
    client = ClientInfo(addr=args.ip, helo=args.helo, name=None)

    async def scan_all() -> int:
        resolver = Resolver(cfg.dns)
        store = await bayes_cli.open_existing_store(cfg)
        status = 0
        for path in args.files:
            for name in _message_files(path):
                try:
                    raw = sys.stdin.buffer.read() if name == "-" else open(name, "rb").read()
                except OSError as exc:
                    print(f"{PROGRAM}: {name}: {exc.strerror}", file=sys.stderr)
                    status = 1
                    continue
                started = time.monotonic()
                ctx = CheckContext(message=parse(raw), client=client, mail_from=args.sender or "",
                                   rcpt_tos=list(args.rcpt or []), profile=args.profile,
                                   resolver=resolver, store=store)
                result = await engine.scan(ctx)
                elapsed = time.monotonic() - started
                symbols = sorted(result.symbols.values(), key=lambda s: s.name)
                if args.json:
                    print(json.dumps({
                        "file": name, "action": result.action, "score": result.score,
                        "required_score": result.required_score,
                        "symbols": {s.name: {"score": s.score, "options": list(s.options)}
                                    for s in symbols},
                    }, ensure_ascii=False), flush=True)
                    continue
                print(f"Results for file: {name} ({elapsed:.3f} seconds)")
                print(f"Action: {result.action}")
                print(f"Score: {result.score:.2f} / {result.required_score:.2f}")
                for s in symbols:
                    options = f"[{', '.join(s.options)}]" if s.options else ""
                    print(f"Symbol: {s.name} ({s.score:.2f}){options}")
                print(flush=True)
        resolver.close()
        if store is not None:
            await store.close()
        return status

    return run(scan_all())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description="Before-queue content filter for Postfix")
    parser.add_argument("--version", action="version", version=f"{PROGRAM} {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("-c", "--config", metavar="FILE", help="TOML configuration file")
        return p

    run = with_config(sub.add_parser("run", help="run the proxy daemon"))
    run.add_argument("--listen", metavar="HOST:PORT", help="address of the (first) listener")
    run.add_argument("--downstream", metavar="HOST:PORT", help="re-injection listener of the (first) listener")
    run.add_argument("--state-dir", metavar="DIR", help="state directory")
    run.add_argument("--controller", metavar="HOST:PORT|unix:PATH",
                     help="serve the HTTP controller there (controller.listen, turned on)")
    run.set_defaults(func=cmd_run)

    test = with_config(sub.add_parser("configtest", help="validate a configuration and exit"))
    test.set_defaults(func=cmd_configtest)

    scan = with_config(sub.add_parser("scan", help="score messages and print why, rspamc-style"))
    scan.add_argument("--state-dir", metavar="DIR", help="state directory")
    scan.add_argument("--ip", metavar="IP", help="client address (as XFORWARD ADDR)")
    scan.add_argument("--helo", metavar="NAME", help="client HELO name")
    scan.add_argument("--from", dest="sender", metavar="ADDR", help="envelope sender")
    scan.add_argument("--rcpt", metavar="ADDR", nargs="+", help="envelope recipients")
    scan.add_argument("--profile", default="inbound", choices=("inbound", "outbound"))
    scan.add_argument("--dns", metavar="HOST:PORT", help="nameserver to ask")
    scan.add_argument("--json", action="store_true", help="one JSON object per message")
    scan.add_argument("files", nargs="+", metavar="FILE|DIR|-")
    scan.set_defaults(func=cmd_scan)

    # Subcommands of features that live in their own packages (learn and
    # bayes; dkim): each module offers add_parsers(sub, with_config).
    for mod in (bayes_cli, sign_cli, controller_cli, doctor_cli, canary_cli):
        mod.add_parsers(sub, with_config)

    dump = with_config(sub.add_parser("configdump", help="print the effective configuration"))
    dump.add_argument("--state-dir", metavar="DIR", help="state directory")
    dump.set_defaults(func=cmd_configdump)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"{PROGRAM}: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
