"""DNS lists: the client address against DNSBLs, domains against URIBL/DBL-style lists.

What it asks (``scan.dnsbl.zones``, one entry per list):

- ``kind = "ip"``: the client address from XFORWARD, IPv4 as reversed octets
  (192.0.2.1 -> 1.2.0.192.ZONE), IPv6 as reversed nibbles (RFC 5782).
  Addresses in ``exclude_networks`` (loopback, private) are never asked about.
- ``kind = "domain"``: the domains of the message's URLs, of the envelope
  sender and of the From address, reduced to the registrable domain (Public
  Suffix List) when the list expects it, at most ``max_domains`` per list
  and message (sender and From first), minus ``exclude_domains``.

What an answer means:

- NXDOMAIN / no A record: not listed, no symbol.
- 127.255.255.x, or one of the zone's ``blocked_codes``: the list refused the
  query (over its free limit, or asked through a public resolver):
  RBL_BLOCKED / URIBL_BLOCKED, never a listing.
- a code in the zone's ``returncodes`` map or with a bit of its ``bits``
  mask set: that symbol, options "VALUE CODE".
- any other answer (a code the map does not know, or no 127.0.0.0/8 address
  at all: a resolver that rewrites NXDOMAIN): RBL_UNKNOWN_RESULT /
  URIBL_UNKNOWN_RESULT, not a listing.
- a timeout or SERVFAIL: RBL_DNSFAIL / URIBL_DNSFAIL (options "ZONE VALUE
  reason"), so the engine's DNS-failure policy (soft reject) applies.

No resolver (``ctx.resolver`` None): nothing is reported. The check runs for
the listener profiles in ``profiles`` only (inbound by default).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from collections.abc import Iterable

from smtpproxy.common.config import Config, DnsblZone, parse_networks
from smtpproxy.common.dns import DnsTempError
from smtpproxy.scan.checks.base import CheckContext, Hit
from smtpproxy.scan.engine import SymbolDef
from smtpproxy.scan.psl import PublicSuffixList

logger = logging.getLogger("smtpproxy.scan")

FIXED_SYMBOLS = {
    "RBL_DNSFAIL": "a DNSBL lookup of the client address failed temporarily",
    "RBL_BLOCKED": "a DNSBL refused the query (127.255.255.x or the zone's blocked code)",
    "RBL_UNKNOWN_RESULT": "a DNSBL answered a code its return-code map does not know",
    "URIBL_DNSFAIL": "a URIBL/DBL lookup of a domain failed temporarily",
    "URIBL_BLOCKED": "a URIBL/DBL refused the query (127.255.255.x or the zone's blocked code)",
    "URIBL_UNKNOWN_RESULT": "a URIBL/DBL answered a code its return-code map does not know",
}
REFUSED_NET = ipaddress.ip_network("127.255.255.0/24")
LISTED_NET = ipaddress.ip_network("127.0.0.0/8")
# The PSL file is read once per process and path: a reload rebuilds the check,
# and the list changes with the package, not with our configuration.
MAX_PSL_BYTES = 4 * 1024 * 1024
_psl_cache: dict[str, PublicSuffixList] = {}


def public_suffix_list(path: str) -> PublicSuffixList:
    """The list at ``path``; missing or unusable: an empty one (registrable = last two labels)."""
    psl = _psl_cache.get(path)
    if psl is None:
        try:
            if os.path.getsize(path) > MAX_PSL_BYTES:
                raise OSError(f"larger than {MAX_PSL_BYTES} bytes")
            psl = PublicSuffixList.load(path)
        except (OSError, UnicodeError) as exc:
            logger.warning("public suffix list %s unusable (%s); registrable domains "
                           "are the last two labels", path, exc)
            psl = PublicSuffixList.parse("")
        _psl_cache[path] = psl
    return psl


def _ascii(name: str) -> str:
    """A domain name in its DNS (IDNA) form; "" when it has none."""
    if name.isascii():
        return name.lower()
    try:
        return name.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return ""


def reversed_name(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """1.2.0.192 for 192.0.2.1; 32 reversed nibbles for IPv6 (no .in-addr.arpa / .ip6.arpa)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # as dnspython's reversename does
    return ip.reverse_pointer.rsplit(".", 2)[0]


class DnsblCheck:
    name = "dnsbl"
    after: tuple[str, ...] = ()
    # Runs in the engine's task until it has to wait (checks/base.py).
    inline = True

    def __init__(self, cfg: Config | None = None):
        cfg = cfg if cfg is not None else Config()
        self.cfg = cfg.scan.dnsbl
        self.zones = self.cfg.zones if self.cfg.enabled else ()
        self.exclude = parse_networks(self.cfg.exclude_networks, "scan.dnsbl.exclude_networks")
        self.exclude_domains = {d.lower().strip(".") for d in self.cfg.exclude_domains}
        self.symbols = dict(FIXED_SYMBOLS)
        for zone in self.zones:
            for symbol in zone.symbols:
                self.symbols[symbol] = f"listed in {zone.zone}"
        needs_psl = any(z.kind == "domain" and z.registrable_domain for z in self.zones)
        # The list DMARC uses (one knob for the program); DMARC refuses to start without it.
        self.psl = public_suffix_list(cfg.scan.dmarc.public_suffix_list) if needs_psl else None

    def symbol_defs(self) -> dict[str, SymbolDef]:
        """Scores given with a zone you added (zones[].scores)."""
        return {symbol: SymbolDef(score, f"Listed in {zone.zone}")
                for zone in self.zones for symbol, score in zone.scores.items()}

    async def run(self, ctx: CheckContext) -> list[Hit]:
        if not self.zones or ctx.resolver is None or ctx.profile not in self.cfg.profiles:
            return []
        lookups: list[tuple[DnsblZone, str, str]] = []  # (zone, what, query name)
        ip = ctx.client.ip
        if ip is not None and not any(ip in net for net in self.exclude):
            for zone in self.zones:
                if zone.kind == "ip" and (zone.ipv6 if ip.version == 6 else zone.ipv4):
                    lookups.append((zone, str(ip), f"{reversed_name(ip)}.{zone.zone}"))
        domain_zones = [z for z in self.zones if z.kind == "domain"]
        if domain_zones:
            sources = self._domain_sources(ctx)
            memo: dict[tuple, tuple[str, str] | None] = {}  # the same hosts for every zone
            for zone in domain_zones:
                for value, query in self._domains_for(zone, sources, memo):
                    lookups.append((zone, value, f"{query}.{zone.zone}"))
        if not lookups:
            return []
        # Answers the resolver has cached are read at once; only the others are asked for.
        cached = getattr(ctx.resolver, "cached", None)
        answers: list[list[Hit] | None] = []
        missing = []
        for zone, value, name in lookups:
            codes = cached(name, "A") if cached is not None else None
            if codes is None:
                missing.append(len(answers))
                answers.append(None)
            else:
                answers.append(self._hits(zone, value, [r.address for r in codes]))
        if len(missing) == 1:
            answers[missing[0]] = await self._ask(ctx, *lookups[missing[0]])
        elif missing:
            asked = await asyncio.gather(*(self._ask(ctx, *lookups[i]) for i in missing))
            for i, found in zip(missing, asked, strict=True):
                answers[i] = found
        return [hit for found in answers if found for hit in found]

    # ------------------------------------------------------------ what to ask

    def _domain_sources(self, ctx: CheckContext) -> dict[str, list[str]]:
        msg = ctx.message
        sender = ctx.mail_from.rpartition("@")[2] if "@" in ctx.mail_from else ""
        return {
            "envelope_sender": [sender] if sender else [],
            "header_from": [msg.from_domain] if msg is not None and msg.from_domain else [],
            "urls": list(msg.url_domains) if msg is not None else [],
        }

    def _domains_for(self, zone: DnsblZone, sources: dict[str, list[str]],
                     memo: dict | None = None) -> Iterable[tuple[str, str]]:
        """(the domain as found/reduced, the name asked), distinct, at most max_domains."""
        seen: set[str] = set()
        memo = {} if memo is None else memo
        for source in ("envelope_sender", "header_from", "urls"):
            if not getattr(zone, source):
                continue
            from_url = source == "urls"
            for host in sources[source]:
                # What _domain_query depends on: the host, where it was found, two zone settings.
                key = (host, from_url, zone.url_ips, zone.registrable_domain)
                if key in memo:
                    item = memo[key]
                else:
                    item = memo[key] = self._domain_query(zone, host, from_url=from_url)
                if item is None or item[1] in seen:
                    continue
                seen.add(item[1])
                yield item
                if len(seen) >= self.cfg.max_domains:
                    return

    def _domain_query(self, zone: DnsblZone, host: str, from_url: bool) -> tuple[str, str] | None:
        host = host.strip("[]").rstrip(".").lower()
        ip = None
        if host and (host[0].isdigit() or ":" in host):  # else surely a name: no failed parse
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                pass
        if ip is not None:
            if not (from_url and zone.url_ips and ip.version == 4):
                return None
            if any(ip in net for net in self.exclude):
                return None
            return str(ip), reversed_name(ip)
        name = _ascii(host)
        if "." not in name or any(not label for label in name.split(".")):
            return None
        if self.psl is not None and zone.registrable_domain:
            name = self.psl.organizational_domain(name)
        if self._excluded(name):
            return None
        return name, name

    def _excluded(self, name: str) -> bool:
        if not self.exclude_domains:
            return False
        labels = name.split(".")
        return any(".".join(labels[i:]) in self.exclude_domains for i in range(len(labels)))

    # ------------------------------------------------------------ the answer

    async def _ask(self, ctx: CheckContext, zone: DnsblZone, value: str, name: str) -> list[Hit]:
        prefix = "RBL" if zone.kind == "ip" else "URIBL"
        try:
            codes = await ctx.resolver.a(name)
        except DnsTempError as exc:
            return [Hit(f"{prefix}_DNSFAIL", (f"{zone.zone} {value} {exc.reason}",))]
        return self._hits(zone, value, codes)

    def _hits(self, zone: DnsblZone, value: str, codes: list[str]) -> list[Hit]:
        prefix = "RBL" if zone.kind == "ip" else "URIBL"
        hits = []
        for code in codes:
            hits.extend(self._meaning(zone, prefix, value, code))
        return hits

    def _meaning(self, zone: DnsblZone, prefix: str, value: str, code: str) -> list[Hit]:
        try:
            addr = ipaddress.IPv4Address(code)
        except ValueError:
            addr = None
        if addr is not None and (addr in REFUSED_NET or code in zone.blocked_codes):
            return [Hit(f"{prefix}_BLOCKED", (f"{zone.zone} {code}",))]
        if addr is None or addr not in LISTED_NET:
            return [Hit(f"{prefix}_UNKNOWN_RESULT", (f"{zone.zone} {value} {code}",))]
        evidence = (f"{value} {code}",)
        hits = [Hit(symbol, evidence) for symbol, codes in zone.returncodes.items() if code in codes]
        last = int(addr) & 0xFF
        hits += [Hit(symbol, evidence) for symbol, bit in zone.bits.items() if last & bit]
        return hits or [Hit(f"{prefix}_UNKNOWN_RESULT", (f"{zone.zone} {value} {code}",))]
