"""The checks, one module each. ``all_checks()`` lists the ones the engine runs."""

from __future__ import annotations

import importlib

from smtpproxy.common.config import Config
from smtpproxy.scan.checks.base import Check


def all_checks(cfg: Config | None = None) -> list[Check]:
    """Every check, built from ``cfg`` (the whole Config) where a check needs settings."""
    from smtpproxy.scan.checks.gtube import GtubeCheck
    from smtpproxy.scan.checks.headers import HeadersCheck
    from smtpproxy.scan.checks.mime import MimeCheck
    from smtpproxy.scan.checks.spf import SpfCheck

    checks: list[Check] = [GtubeCheck(), HeadersCheck(), MimeCheck(), SpfCheck()]
    # Checks being built alongside: registered here as they land.
    for module, cls in (("dkim", "DkimCheck"), ("arc", "ArcCheck"), ("dmarc", "DmarcCheck"),
                        ("dnsbl", "DnsblCheck"), ("multimap", "MultimapCheck"),
                        ("bayes", "BayesCheck")):
        try:
            mod = importlib.import_module(f"smtpproxy.scan.checks.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"smtpproxy.scan.checks.{module}":
                raise
            continue
        checks.append(getattr(mod, cls)(cfg) if cfg is not None else getattr(mod, cls)())
    return checks
