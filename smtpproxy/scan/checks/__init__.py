"""The checks, one module each. ``all_checks()`` lists the ones the engine runs."""

from __future__ import annotations

from smtpproxy.scan.checks.base import Check


def all_checks() -> list[Check]:
    from smtpproxy.scan.checks.gtube import GtubeCheck
    from smtpproxy.scan.checks.headers import HeadersCheck
    from smtpproxy.scan.checks.mime import MimeCheck

    checks: list[Check] = [GtubeCheck(), HeadersCheck(), MimeCheck()]
    try:
        from smtpproxy.scan.checks.spf import SpfCheck
    except ImportError:  # being built alongside; absent until it lands
        pass
    else:
        checks.append(SpfCheck())
    return checks
