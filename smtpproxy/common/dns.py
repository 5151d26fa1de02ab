"""The one asynchronous DNS resolver: a stub resolver behind a bounded TTL cache.

Contract:

- ``await resolver.query(name, rdtype)`` returns the answer's rdata as a
  list. A name that does not exist (NXDOMAIN), has no data of that type
  (NODATA) or cannot exist (an empty or over-long label) gives ``[]``.
- A timeout, SERVFAIL, REFUSED or an unreachable server raises
  ``DnsTempError``: the caller's "try again later" (``*_DNSFAIL`` symbols).
  Nothing else escapes for a DNS problem.
- Helpers return plain values: ``txt`` (each record's character-strings
  joined, as bytes), ``a``/``aaaa`` (address text), ``mx`` ((preference,
  exchange) sorted), ``ptr`` (host names for an IP address).
- Answers are cached for their TTL (capped by ``cache_max_ttl_s``);
  NXDOMAIN/NODATA for the RFC 2308 negative TTL from the SOA in the authority
  section (capped by ``cache_negative_ttl_s``). The cache is an LRU of at
  most ``cache_size`` entries. Temporary errors are never cached, so the
  next message asks again.
- Concurrent queries for the same (name, type) share one lookup.
- Nothing blocks the event loop once the Resolver exists. Construct it at
  startup: reading /etc/resolv.conf is a (small) file read. One Resolver per
  event loop.
- ``close()`` closes its sockets and ends lookups in flight (DnsTempError);
  a Resolver used again afterwards opens new ones.

The transport is ``dnsclient`` (one UDP socket per nameserver, no task per
lookup) and the wire format ``dnswire``; dnspython reads /etc/resolv.conf,
parses names and builds the rdata.

Names are always absolute (no search list): mail names are fully qualified.
Free of mail-content imports, so the policy daemon can use it too.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import dns.exception
import dns.name
import dns.nameserver
import dns.rdata
import dns.rdatatype
import dns.resolver
import dns.reversename

from smtpproxy.common.config import DnsConfig, parse_nameserver
from smtpproxy.common.dnsclient import DnsClient
from smtpproxy.common.dnswire import RCODE_NXDOMAIN, RCODE_YXDOMAIN, Response, name_wire

__all__ = ["DnsTempError", "Resolver"]

# resolv.conf without a nameserver line means the local host to the C library;
# we do the same instead of refusing to start.
_FALLBACK_NAMESERVER = "127.0.0.1"


class DnsTempError(Exception):
    """The answer is unknown for now (timeout, SERVFAIL, REFUSED, network error)."""

    def __init__(self, name: str, rdtype: str, reason: str):
        super().__init__(f"{name}/{rdtype}: {reason}")
        self.name = name
        self.rdtype = rdtype
        self.reason = reason


@dataclass(frozen=True)
class _Entry:
    expires: float
    rdatas: tuple[dns.rdata.Rdata, ...]


class Resolver:
    """Async stub resolver with a TTL cache; see the module docstring for the contract."""

    def __init__(self, config: DnsConfig | None = None, *,
                 clock: Callable[[], float] = time.monotonic):
        self.config = config = config or DnsConfig()
        # The clock is injectable so cache expiry can be tested without sleeping.
        self._clock = clock
        if config.nameserver:
            self.nameservers = [parse_nameserver(config.nameserver, "dns.nameserver")]
        else:
            self.nameservers = _system_nameservers()
        self._client: DnsClient | None = None
        self._cache: OrderedDict[tuple[str, int], _Entry] = OrderedDict()
        self._inflight: dict[tuple[str, int], asyncio.Future] = {}
        # Counters for tests and the log.
        self.hits = 0
        self.misses = 0

    @property
    def timeout_s(self) -> float:
        return self.config.timeout_s

    def cache_clear(self) -> None:
        self._cache.clear()

    def __len__(self) -> int:
        return len(self._cache)

    def close(self) -> None:
        """Close the sockets; lookups in flight end with DnsTempError."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _transport(self, loop: asyncio.AbstractEventLoop) -> DnsClient:
        client = self._client
        if client is None or client.loop is not loop:
            if client is not None:
                client.close()  # left by an earlier event loop (a CLI run per file)
            cfg = self.config
            client = self._client = DnsClient(loop, self.nameservers, timeout_s=cfg.timeout_s,
                                              attempts=cfg.attempts,
                                              payload=cfg.edns_payload_bytes)
        return client

    # ------------------------------------------------------------ the lookup

    def cached(self, name: str, rdtype: str | int) -> list[dns.rdata.Rdata] | None:
        """What ``query`` would return from the cache, without asking; None when
        the answer is not cached (or has expired). Never waits, never raises."""
        key = _cache_key(name, rdtype)
        if key is None:
            return []
        return self._cached(key)

    def _cached(self, key: tuple[str, int]) -> list[dns.rdata.Rdata] | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        if entry.expires <= self._clock():
            self._cache.pop(key, None)
            return None
        try:
            self._cache.move_to_end(key)
        except KeyError:  # dropped meanwhile (a lookup from a worker thread)
            pass
        self.hits += 1
        return list(entry.rdatas)

    async def query(self, name: str, rdtype: str | int) -> list[dns.rdata.Rdata]:
        """The rdata of ``name``/``rdtype``; [] for NXDOMAIN/NODATA; DnsTempError otherwise."""
        key = _cache_key(name, rdtype)
        if key is None:
            return []  # a name that cannot exist has no records
        answer = self._cached(key)
        if answer is not None:
            return answer
        loop = asyncio.get_running_loop()
        future = self._inflight.get(key)
        # A lookup left over from another event loop (one that was closed
        # mid-lookup, e.g. a CLI run per file) can never finish here.
        if future is None or future.get_loop() is not loop:
            self.misses += 1
            future = self._inflight[key] = loop.create_future()
            self._transport(loop).lookup(
                _key_wire(key[0]), key[1],
                lambda response, reason: self._answered(key, future, response, reason))
        # Shielded: one caller giving up (its check timed out) must not
        # cancel the lookup others are waiting for.
        return list(await asyncio.shield(future))

    def _answered(self, key: tuple[str, int], future: asyncio.Future,
                  response: Response | None, reason: str | None) -> None:
        if self._inflight.get(key) is future:
            del self._inflight[key]
        if future.done() or future.get_loop().is_closed():
            return
        if response is None:
            name_text = key[0].rstrip(".") or "."
            type_text = dns.rdatatype.to_text(key[1])
            future.set_exception(DnsTempError(name_text, type_text, reason or "failed"))
            return
        if response.rcode == RCODE_YXDOMAIN:
            future.set_result(())  # a DNAME substitution overflowed: no such name
            return
        if response.rcode == RCODE_NXDOMAIN or not response.rdatas:
            ttl = self.config.cache_negative_ttl_s
            if response.negative_ttl is not None:
                ttl = min(ttl, response.negative_ttl)
            self._store(key, (), ttl)
            future.set_result(())
            return
        self._store(key, response.rdatas, min(response.ttl, self.config.cache_max_ttl_s))
        future.set_result(response.rdatas)

    def _store(self, key: tuple[str, int], rdatas: tuple, ttl: float) -> None:
        if self.config.cache_size <= 0 or ttl <= 0:
            return
        self._cache[key] = _Entry(self._clock() + ttl, rdatas)
        self._cache.move_to_end(key)
        while len(self._cache) > self.config.cache_size:
            self._cache.popitem(last=False)

    # ------------------------------------------------------------ helpers

    async def txt(self, name: str) -> list[bytes]:
        """TXT records, each one's character-strings joined (RFC 7208 3.3, RFC 6376 3.6.2.2)."""
        return [b"".join(r.strings) for r in await self.query(name, "TXT")]

    async def a(self, name: str) -> list[str]:
        return [r.address for r in await self.query(name, "A")]

    async def aaaa(self, name: str) -> list[str]:
        return [r.address for r in await self.query(name, "AAAA")]

    async def mx(self, name: str) -> list[tuple[int, str]]:
        """(preference, exchange without the final dot), most preferred first."""
        records = await self.query(name, "MX")
        return sorted((r.preference, r.exchange.to_text(omit_final_dot=True)) for r in records)

    async def ptr(self, address: str) -> list[str]:
        """Host names for an IP address (not validated against A/AAAA: callers do that)."""
        try:
            ipaddress.ip_address(address)
        except ValueError:
            return []
        name = dns.reversename.from_address(address).to_text()
        return [r.target.to_text(omit_final_dot=True) for r in await self.query(name, "PTR")]


# Names made of letters, digits, "-" and "_" only: their cache key is their
# lower-cased text, without building a dns.name.Name (most of the cost of a
# cache hit). Anything else takes dnspython's parsing.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-]{1,63}(?:\.[A-Za-z0-9_-]{1,63})*\.?\Z")
_RDTYPES: dict[str | int, dns.rdatatype.RdataType] = {}


def _rdtype(rdtype: str | int) -> dns.rdatatype.RdataType:
    rtype = _RDTYPES.get(rdtype)
    if rtype is None:
        rtype = _RDTYPES[rdtype] = dns.rdatatype.RdataType.make(rdtype)
    return rtype


def _qname(name: str) -> dns.name.Name | None:
    """The absolute name; None for one that cannot exist (empty or over-long label, bad IDNA)."""
    try:
        return dns.name.from_text(name.rstrip(".") + ".") if name.strip(".") else None
    except (dns.exception.DNSException, UnicodeError, ValueError):
        return None


def _cache_key(name: str, rdtype: str | int) -> tuple[str, int] | None:
    """(the absolute name's lower-cased text, the type); None for a name that cannot exist."""
    rtype = int(_rdtype(rdtype))
    # 253 characters without the final dot: the 255-octet wire-format limit.
    if len(name) - name.endswith(".") <= 253 and _PLAIN_NAME.match(name):
        return name.lower().rstrip(".") + ".", rtype
    qname = _qname(name)
    return None if qname is None else (qname.to_text().lower(), rtype)


def _key_wire(key: str) -> bytes:
    # The cache key is the name's lower-cased text, IDNA already applied: ASCII.
    if _PLAIN_NAME.match(key) or key == ".":
        return name_wire(key)
    return dns.name.from_text(key).to_wire()


def _system_nameservers() -> list[tuple[str, int]]:
    try:
        system = dns.resolver.Resolver(configure=True)
    except dns.resolver.NoResolverConfiguration:
        return [(_FALLBACK_NAMESERVER, 53)]
    servers = []
    for ns in system.nameservers:
        # dnspython lists plain addresses, or Nameserver objects for other ports and protocols.
        if isinstance(ns, str):
            servers.append((ns, 53))
        elif isinstance(ns, dns.nameserver.Do53Nameserver):
            servers.append((ns.address, ns.port))
    return servers or [(_FALLBACK_NAMESERVER, 53)]
