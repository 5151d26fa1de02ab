"""The ``smtpproxy`` command: the content-filter daemon and its admin tools.

    smtpproxy run [-c FILE] [--listen HOST:PORT] [--downstream HOST:PORT] [--state-dir DIR]
    smtpproxy configtest [-c FILE]
    smtpproxy configdump [-c FILE]

Without -c, $SMTPPROXY_CONFIG or /etc/smtpproxy/smtpproxy.toml is read when
it exists; otherwise the built-in defaults apply (listen 127.0.0.1:10025,
re-inject to 127.0.0.1:10026). Command-line flags override the file; with
several listeners, --listen and --downstream change the first one.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any

from smtpproxy.common import config as config_mod
from smtpproxy.common import log as logsetup
from smtpproxy.common.config import Config, ConfigError
from smtpproxy.common.runtime import run, serve

PROGRAM = "smtpproxy"


def config_path(arg: str | None) -> str | None:
    if arg:
        return arg
    env = os.environ.get("SMTPPROXY_CONFIG")
    if env:
        return env
    return config_mod.DEFAULT_CONFIG_PATH if os.path.exists(config_mod.DEFAULT_CONFIG_PATH) else None


def load_with_flags(args: argparse.Namespace) -> Config:
    """The file's configuration with the command-line flags applied on top."""
    overrides: dict[str, Any] = {}
    if getattr(args, "state_dir", None):
        overrides["state_dir"] = args.state_dir
    cfg = config_mod.load(config_path(args.config), overrides)
    listen = getattr(args, "listen", None)
    downstream = getattr(args, "downstream", None)
    if listen or downstream:
        first = cfg.proxy.listeners[0]
        changes = {}
        if listen:
            config_mod.parse_hostport(listen, "--listen")
            changes["listen"] = listen
        if downstream:
            config_mod.parse_hostport(downstream, "--downstream")
            changes["downstream"] = downstream
        listeners = (dataclasses.replace(first, **changes), *cfg.proxy.listeners[1:])
        cfg = dataclasses.replace(cfg, proxy=dataclasses.replace(cfg.proxy, listeners=listeners))
        cfg.proxy.check("proxy.")
    return cfg


def ensure_state_dir(cfg: Config) -> None:
    try:
        os.makedirs(cfg.state_dir, mode=0o750, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            "state_dir", f"cannot create {cfg.state_dir}: {exc.strerror} (set --state-dir)"
        ) from None


def cmd_run(args: argparse.Namespace) -> int:
    from smtpproxy.daemon import ProxyService

    cfg = load_with_flags(args)
    ensure_state_dir(cfg)
    logsetup.setup(cfg.log, PROGRAM)
    return run(serve(PROGRAM, cfg, ProxyService, lambda: load_with_flags(args)))


def cmd_configtest(args: argparse.Namespace) -> int:
    cfg = load_with_flags(args)
    if cfg.scan.enabled:
        from smtpproxy.scan.setup import build_engine

        build_engine(cfg)  # the symbols table and every check's symbols
    print(f"{config_path(args.config) or '(built-in defaults)'}: configuration OK")
    return 0


def cmd_configdump(args: argparse.Namespace) -> int:
    sys.stdout.write(config_mod.dump(load_with_flags(args)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description="Before-queue content filter for Postfix")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("-c", "--config", metavar="FILE", help="TOML configuration file")
        return p

    run = with_config(sub.add_parser("run", help="run the proxy daemon"))
    run.add_argument("--listen", metavar="HOST:PORT", help="address of the (first) listener")
    run.add_argument("--downstream", metavar="HOST:PORT", help="re-injection listener of the (first) listener")
    run.add_argument("--state-dir", metavar="DIR", help="state directory")
    run.set_defaults(func=cmd_run)

    test = with_config(sub.add_parser("configtest", help="validate a configuration and exit"))
    test.set_defaults(func=cmd_configtest)

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
