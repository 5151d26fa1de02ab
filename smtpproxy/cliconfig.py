"""The configuration a ``smtpproxy`` subcommand runs with: the file, the flags on top, the state dir.

Shared by every subcommand module (cli.py, scan/bayes/cli.py, sign/cli.py).
Without -c, $SMTPPROXY_CONFIG or /etc/smtpproxy/smtpproxy.toml is read when
it exists; otherwise the built-in defaults apply.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any

from smtpproxy.common import config as config_mod
from smtpproxy.common.config import Config, ConfigError


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
    if getattr(args, "controller", None):
        overrides["controller.enabled"] = True
        overrides["controller.listen"] = args.controller
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
