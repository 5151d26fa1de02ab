"""The checks the engine runs, in order: ``all_checks(cfg)``.

Not the package's __init__: a check imports the engine's types, and the
engine imports checks/base.py, so the package itself must import no check.
"""

from __future__ import annotations

from smtpproxy.common.config import Config
from smtpproxy.scan.checks.antivirus import AntivirusCheck
from smtpproxy.scan.checks.arc import ArcCheck
from smtpproxy.scan.checks.attachments import AttachmentsCheck
from smtpproxy.scan.checks.base import Check
from smtpproxy.scan.checks.bayes import BayesCheck
from smtpproxy.scan.checks.display_names import DisplayNamesCheck
from smtpproxy.scan.checks.dkim import DkimCheck
from smtpproxy.scan.checks.dmarc import DmarcCheck
from smtpproxy.scan.checks.dnsbl import DnsblCheck
from smtpproxy.scan.checks.gtube import GtubeCheck
from smtpproxy.scan.checks.headers import HeadersCheck
from smtpproxy.scan.checks.html_text import HtmlTextCheck
from smtpproxy.scan.checks.mime import MimeCheck
from smtpproxy.scan.checks.mixed_charset import MixedCharsetCheck
from smtpproxy.scan.checks.multimap import MultimapCheck
from smtpproxy.scan.checks.phishing import PhishingCheck
from smtpproxy.scan.checks.redirectors import RedirectorsCheck
from smtpproxy.scan.checks.reply import ReplyCheck
from smtpproxy.scan.checks.spf import SpfCheck
from smtpproxy.scan.spamassassin.check import SpamAssassinCheck


def all_checks(cfg: Config | None = None) -> list[Check]:
    """Every check, built from ``cfg`` (the whole Config) where a check needs settings."""
    configured = (DkimCheck, ArcCheck, DmarcCheck, DnsblCheck, MultimapCheck, BayesCheck,
                  SpamAssassinCheck)
    configured += (ReplyCheck, AntivirusCheck, AttachmentsCheck)
    # The native rules: no I/O, settings only for their domain lists.
    configured += (RedirectorsCheck, PhishingCheck)
    return [GtubeCheck(), HeadersCheck(), MimeCheck(), SpfCheck(),
            DisplayNamesCheck(), HtmlTextCheck(), MixedCharsetCheck(),
            *(check(cfg) if cfg is not None else check() for check in configured)]
