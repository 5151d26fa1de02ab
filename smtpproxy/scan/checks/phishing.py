"""Links whose text shows one site while they lead to another (rspamd's phishing module).

For each <a href> of an HTML part whose text starts with a URL or a host
name (``paypal.com``, ``https://www.paypal.com/login``), the displayed host
is compared with the link's:

- the same host, or one a subdomain of the other: fine;
- the link carries the displayed URL as its only embedded target
  (``click.example/?u=https://shop.example/``): fine;
- the link goes through a known redirector (scan.redirectors_file):
  REDIRECTOR_FALSE, which weighs nothing (rspamd's exception of that name);
- the link's registrable domain is the From domain and DMARC passed: fine
  (the sender's own tracking domain);
- otherwise PHISHING, weighted as rspamd does by how alike the two
  registrable labels are: the same label under another suffix
  (brand.co.uk shown, brand.com linked) weighs nothing, a look-alike
  (paypa1.com) or a mix of scripts weighs fully, an unrelated name half.

ZERO_WIDTH_SPACE_URL: a URL whose host holds zero-width characters, which
only serve to hide the name from filters (rspamd's rules/misc.lua).
"""

from __future__ import annotations

import math
import re
from typing import ClassVar

from smtpproxy.common.config import Config
from smtpproxy.scan.checks.base import CheckContext, Hit
from smtpproxy.scan.checks.dnsbl import public_suffix_list
from smtpproxy.scan.checks.redirectors import redirector_domains
from smtpproxy.scan.html_doc import html_docs
from smtpproxy.scan.urls import (
    ZERO_WIDTH,
    idna_to_unicode,
    is_subdomain_or_same,
    listed_domain,
    split_url,
    url_host,
)

MAX_OPTIONS = 5
TRANSFER_SCHEMES = frozenset(("http", "https", "ftp"))
# A displayed text that starts with a URL or a host name: scheme, optional
# userinfo, then a name of at least two labels.
DISPLAYED_URL_RE = re.compile(
    r"(?i)^(?:(?P<scheme>https?|ftp)://)?(?:[^\s/@:]+(?::[^\s/@]*)?@)?"
    r"(?P<host>(?:[\w-]+\.)+[\w-]{2,}|\[[0-9a-f:.]+\])\.?(?=$|[/:?#\s,;!)\]>])")
# URLs inside a link's query or path: the redirection target of a tracker.
EMBEDDED_URL_RE = re.compile(r"(?i)(?:https?|ftp)(?::|%3a)(?://|%2f%2f)([^/?#&%\s]+)")
MIN_DISPLAY_CHARS = 5
# Bounds on hostile links: the labels compared (the edit distance costs their
# product), the distinct pairs weighed per message, the tracker URL searched.
MAX_LABEL_CHARS = 32
MAX_PAIRS = 50
MAX_EMBEDDED_SEARCH_CHARS = 2048
# A link's host worth comparing: letters, digits, hyphens and dots, or an
# address literal (an undecoded "=3D" or a stray quote leaves no real host).
LINKED_HOST_RE = re.compile(r"^(?:[\w-]+\.)+[\w-]+$|^\[[0-9a-f:.]+\]$")


def levenshtein(a: str, b: str, replace_cost: int = 2) -> int:
    """Edit distance with a substitution costing ``replace_cost`` (rspamd calls it with 2)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1,
                               previous[j - 1] + (0 if ca == cb else replace_cost)))
        previous = current
    return previous[-1]


def phishing_weight(linked: str, shown: str) -> float:
    """rspamd's weight for a link to registrable domain ``linked`` showing ``shown``."""
    label, shown_label = linked.split(".", 1)[0], shown.split(".", 1)[0]
    if "." not in linked or "." not in shown or _numeric(linked) or _numeric(shown):
        label, shown_label = linked, shown
    if label == shown_label:
        return 0.0  # the same name under another public suffix
    if label.isascii() != shown_label.isascii():
        return 1.0  # one name in another script: rspamd's confusable check weighs it fully
    label, shown_label = label[:MAX_LABEL_CHARS], shown_label[:MAX_LABEL_CHARS]
    dist = 2 * levenshtein(label, shown_label) / (len(label) + len(shown_label))
    if dist <= 0.3:
        return 1.0  # a look-alike
    if dist <= 1.0:
        return math.tanh(3 * (1 - dist + 0.1))
    return 0.5  # unrelated names


def _numeric(host: str) -> bool:
    return host.startswith("[") or host.replace(".", "").isdigit()


def _embedded_hosts(href: str) -> list[str]:
    """Hosts of the URLs a tracking link carries after its own host."""
    start = href.find("//") + 2 if "//" in href else 0
    return [m.group(1).lower().rstrip(".")
            for m in EMBEDDED_URL_RE.finditer(href, start, start + MAX_EMBEDDED_SEARCH_CHARS)]


class PhishingCheck:
    name: ClassVar[str] = "phishing"
    symbols: ClassVar[tuple[str, ...]] = ("PHISHING", "REDIRECTOR_FALSE", "ZERO_WIDTH_SPACE_URL")
    # The sender's own domain is excused only when DMARC passed for it.
    after: ClassVar[tuple[str, ...]] = ("dmarc",)
    # Runs in the engine's task until it has to wait (checks/base.py).
    inline: ClassVar[bool] = True

    def __init__(self, cfg: Config | None = None):
        cfg = cfg or Config()
        self.redirectors = redirector_domains(cfg)
        self.psl = public_suffix_list(cfg.scan.dmarc.public_suffix_list)

    async def run(self, ctx: CheckContext) -> list[Hit]:
        hits: list[Hit] = []
        zero_width = {url_host(u) for u in ctx.message.urls if not ZERO_WIDTH.isdisjoint(u)}
        zero_width.discard("")
        if zero_width:
            hits.append(Hit("ZERO_WIDTH_SPACE_URL", tuple(sorted(zero_width))[:MAX_OPTIONS]))
        if not ctx.message.html_parts:
            return hits
        dmarc = ctx.facts.get("dmarc") or {}
        sender_domain = ""
        if dmarc.get("result") == "pass" and dmarc.get("domain"):
            sender_domain = self.psl.organizational_domain(str(dmarc["domain"]))
        weighed: dict[tuple[str, str], float] = {}  # (shown, linked) -> weight
        excused: dict[str, None] = {}
        for doc in html_docs(ctx):
            for link in doc.links:
                found = self._compare(link.href, link.text, sender_domain)
                if found is None:
                    continue
                shown, linked, redirector = found
                if redirector:
                    excused[f"{shown}->{linked}"] = None
                elif (shown, linked) not in weighed and len(weighed) < MAX_PAIRS:
                    weighed[(shown, linked)] = phishing_weight(linked, shown)
        phished = sorted(((w, f"{s}->{li}") for (s, li), w in weighed.items() if w > 0),
                         key=lambda item: -item[0])
        if phished:
            hits.append(Hit("PHISHING", tuple(e for _, e in phished[:MAX_OPTIONS]), phished[0][0]))
        if excused:
            hits.append(Hit("REDIRECTOR_FALSE", tuple(excused)[:MAX_OPTIONS]))
        return hits

    def _compare(self, href: str, text: str, sender_domain: str) -> tuple[str, str, bool] | None:
        """(shown, linked registrable domains, through a redirector) when the link shows another site."""
        if len(text) < MIN_DISPLAY_CHARS:
            return None
        match = DISPLAYED_URL_RE.match(text)
        if match is None:
            return None
        shown_host = idna_to_unicode(match.group("host").lower())
        if not match.group("scheme"):
            # A bare name counts only with a real public suffix ("john.smith" is no host).
            if not shown_host.startswith("www.") and not self.psl.is_listed(
                    _ascii(shown_host).rsplit(".", 1)[-1]):
                return None
        scheme, linked_host = split_url(href)
        if scheme not in TRANSFER_SCHEMES or not LINKED_HOST_RE.match(linked_host):
            return None
        linked_host = idna_to_unicode(linked_host)
        if is_subdomain_or_same(shown_host, linked_host):
            return None
        if any(is_subdomain_or_same(shown_host, host) for host in _embedded_hosts(href)):
            return None
        linked, shown = self._registrable(linked_host), self._registrable(shown_host)
        if sender_domain and linked == sender_domain:
            return None
        redirector = bool(listed_domain(_ascii(linked_host), self.redirectors))
        return idna_to_unicode(shown), idna_to_unicode(linked), redirector


    def _registrable(self, host: str) -> str:
        """The registrable domain of a host name; an address stays whole."""
        return host if _numeric(host) else self.psl.organizational_domain(_ascii(host))


def _ascii(host: str) -> str:
    """A host in its DNS form (xn-- labels), as the public suffix list holds names."""
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return host
