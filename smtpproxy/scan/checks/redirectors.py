"""URL shorteners, redirectors and proxies: links that hide where they lead.

rspamd's names and scores: REDIRECTOR_URL (its multimap "redirector" map,
the list shipped in smtpproxy/scan/data/redirectors.txt), HAS_GOOGLE_REDIR,
HAS_GUC_PROXY_URI, HAS_GOOGLE_FIREBASE_URL (rules/regexp/urls.lua) and
HAS_IPFS_GATEWAY_URL (rules/regexp/misc.lua). rspamd's url_redirector then
follows shortened links over HTTP; we fetch nothing from a message's links.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import ClassVar

from smtpproxy.common.config import Config, ConfigError
from smtpproxy.scan.checks.base import CheckContext, Hit
from smtpproxy.scan.urls import listed_domain, load_domain_list, url_host

MAX_OPTIONS = 5
# Patterns over the whole URL, rspamd's ``{url}`` regexps.
URL_PATTERNS = (
    ("HAS_GOOGLE_REDIR", re.compile(
        r"(?i)[./]google\.(?:[a-z]{2,3}(?:\.[a-z]{2,3})?|info|jobs)/(?:amp/s/|url\?)")),
    ("HAS_GUC_PROXY_URI", re.compile(r"(?i)[./]googleusercontent\.com/proxy")),
    ("HAS_GOOGLE_FIREBASE_URL", re.compile(r"(?i)[./]firebasestorage\.googleapis\.com/")),
)
# IPFS: a gateway path or host marker together with a content identifier.
IPFS_MARK_RE = re.compile(r"(?i)ipfs[._/?-]")
IPFS_CID_RE = re.compile(r"(?i)(?:qm[a-z0-9]{44}|[079fvtbchkzmup][a-z0-9]{44,128})")


def shipped_redirectors() -> frozenset[str]:
    text = resources.files("smtpproxy.scan").joinpath("data/redirectors.txt").read_text("utf-8")
    return frozenset(line.strip().lower() for line in text.splitlines()
                     if line.strip() and not line.startswith("#"))


def redirector_domains(cfg: Config) -> frozenset[str]:
    """The configured list (scan.redirectors_file), or the shipped one."""
    path = cfg.scan.redirectors_file
    if not path:
        return shipped_redirectors()
    try:
        return load_domain_list(path)
    except (OSError, UnicodeError) as exc:
        raise ConfigError("scan.redirectors_file", f"cannot read {path}: {exc}") from None


class RedirectorsCheck:
    name: ClassVar[str] = "redirectors"
    symbols: ClassVar[tuple[str, ...]] = (
        "REDIRECTOR_URL", "HAS_GOOGLE_REDIR", "HAS_GUC_PROXY_URI", "HAS_GOOGLE_FIREBASE_URL",
        "HAS_IPFS_GATEWAY_URL",
    )
    after: ClassVar[tuple[str, ...]] = ()
    # Runs in the engine's task until it has to wait (checks/base.py).
    inline: ClassVar[bool] = True

    def __init__(self, cfg: Config | None = None):
        self.domains = redirector_domains(cfg or Config())

    async def run(self, ctx: CheckContext) -> list[Hit]:
        found: dict[str, dict[str, None]] = {}  # symbol -> evidence, ordered and distinct
        for url in ctx.message.urls:
            host = url_host(url)
            listed = listed_domain(host, self.domains)
            if listed:
                found.setdefault("REDIRECTOR_URL", {})[listed] = None
            if "oogle" in url.lower():
                for symbol, pattern in URL_PATTERNS:
                    if pattern.search(url):
                        found.setdefault(symbol, {})[host] = None
            if IPFS_MARK_RE.search(url) and IPFS_CID_RE.search(url):
                found.setdefault("HAS_IPFS_GATEWAY_URL", {})[host] = None
        return [Hit(symbol, tuple(list(evidence)[:MAX_OPTIONS]))
                for symbol, evidence in found.items()]
