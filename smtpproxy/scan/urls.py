"""URL pieces the URL rules share: the host of a URL, and domain lists matched with their subdomains.

Pure functions over strings; nothing here raises on hostile input.
"""

from __future__ import annotations

import re

SCHEME_RE = re.compile(r"(?i)^([a-z][a-z0-9+-]{0,15}):(?://)?")
# Characters that end the authority part of a URL.
AUTHORITY_END_RE = re.compile(r"[/?#\\]")
MAX_HOST_CHARS = 253
# Code points a reader does not see; inside a host name they only serve to hide it.
ZERO_WIDTH = frozenset("\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e")


def split_url(url: str) -> tuple[str, str]:
    """(scheme, host) of ``url``, lower-cased; "www.x.org" and "//x.org" count as http.

    The host keeps any odd characters it has (the caller may look for them);
    userinfo and port are dropped, and so is a final dot."""
    url = url.strip()
    match = SCHEME_RE.match(url)
    if match:
        scheme, rest = match.group(1).lower(), url[match.end():]
        if scheme not in ("http", "https", "ftp") and not url[match.end(1):].startswith("://"):
            return scheme, ""  # mailto:, tel:, javascript: ... have no host
    elif url.startswith("//"):
        scheme, rest = "http", url[2:]
    else:
        scheme, rest = "http", url
    end = AUTHORITY_END_RE.search(rest)
    authority = rest[:end.start()] if end else rest
    host = authority.rpartition("@")[2]
    if host.startswith("["):  # an IPv6 literal
        host = host[:host.find("]") + 1] if "]" in host else host
    else:
        host = host.partition(":")[0]
    return scheme, host.strip().rstrip(".").lower()[:MAX_HOST_CHARS]


def url_host(url: str) -> str:
    return split_url(url)[1]


def idna_to_unicode(host: str) -> str:
    """An xn-- label in its Unicode form (as a reader sees it); the host unchanged otherwise."""
    if "xn--" not in host:
        return host
    try:
        return host.encode("ascii").decode("idna")
    except (UnicodeError, ValueError):
        return host


def is_subdomain_or_same(a: str, b: str) -> bool:
    """``a`` is ``b``, or one is a subdomain of the other."""
    return a == b or a.endswith("." + b) or b.endswith("." + a)


def load_domain_list(path: str) -> frozenset[str]:
    """Domains one a line; "#" starts a comment. OSError/UnicodeError for the caller to report."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    domains = set()
    for line in text.splitlines():
        line = line.partition("#")[0].strip().lower().rstrip(".")
        if line:
            domains.add(line)
    return frozenset(domains)


def listed_domain(host: str, domains: frozenset[str]) -> str:
    """The entry of ``domains`` that ``host`` is or is under; "" if none."""
    if not host:
        return ""
    while True:
        if host in domains:
            return host
        dot = host.find(".")
        if dot < 0:
            return ""
        host = host[dot + 1:]
