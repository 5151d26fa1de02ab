"""Assembling the scoring engine from the configuration (start-up and reload)."""

from __future__ import annotations

from smtpproxy.common.config import Config
from smtpproxy.common.store import Store
from smtpproxy.scan.checks import all_checks
from smtpproxy.scan.engine import Engine
from smtpproxy.scan.verdict import EngineHook


def make_resolver(cfg: Config):
    """The shared async DNS resolver, when the DNS layer is available."""
    try:
        from smtpproxy.common.dns import Resolver
    except ImportError:
        return None
    return Resolver(cfg.dns) if hasattr(cfg, "dns") else None


def build_engine(cfg: Config) -> Engine:
    """Raises ConfigError (naming the key) when the symbols table is unusable."""
    return Engine(cfg.scan, all_checks(cfg))


def build_hook(cfg: Config, store: Store | None, resolver, hostname: str):
    """(hook, resolver): a resolver already built is reused across reloads."""
    if resolver is None:
        resolver = make_resolver(cfg)
    authserv_id = cfg.scan.authserv_id or cfg.proxy.hostname or hostname
    return EngineHook(cfg, build_engine(cfg), store, resolver, authserv_id), resolver
