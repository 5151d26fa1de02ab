"""Fast IP address handling for the per-request path.

``ipaddress`` objects cost microseconds each; a policy daemon parses the
client address of every request several times (trusted networks,
whitelist, greylist key, rate-limit key). Here an address is parsed once by
the C library into (bits, integer), cached, and networks are integer masks.
"""

from __future__ import annotations

import ipaddress
import socket

# Plain dicts, emptied when full: cheaper than functools.lru_cache, whose
# linked-list nodes the cyclic GC would walk on every full collection.
CACHE_MAX = 16384
_ip_cache: dict[str, tuple[int, int] | None] = {}
_net_cache: dict[tuple[str, int, int], str] = {}


def ip_key(address: str) -> tuple[int, int] | None:
    """'192.0.2.1' -> (32, int); IPv6 -> (128, int); IPv4-mapped IPv6 as IPv4; else None."""
    try:
        return _ip_cache[address]
    except KeyError:
        pass
    if len(_ip_cache) >= CACHE_MAX:
        _ip_cache.clear()
    key = _ip_cache[address] = _parse_ip(address)
    return key


def _parse_ip(address: str) -> tuple[int, int] | None:
    if not address.isascii():
        # inet_pton encodes its argument: bytes that were not UTF-8 (kept as
        # surrogates by the codec) would raise, and no address is non-ASCII.
        return None
    try:
        return 32, int.from_bytes(socket.inet_pton(socket.AF_INET, address), "big")
    except (OSError, ValueError):  # ValueError: an embedded NUL
        pass
    try:
        value = int.from_bytes(socket.inet_pton(socket.AF_INET6, address), "big")
    except (OSError, ValueError):
        return None
    if value >> 32 == 0xFFFF:
        return 32, value & 0xFFFFFFFF
    return 128, value


def client_network(address: str, prefix_v4: int = 24, prefix_v6: int = 64) -> str:
    """'192.0.2.77' -> '192.0.2.0/24'; an unparsable address stands for itself."""
    cache_key = (address, prefix_v4, prefix_v6)
    try:
        return _net_cache[cache_key]
    except KeyError:
        pass
    if len(_net_cache) >= CACHE_MAX:
        _net_cache.clear()
    net = _net_cache[cache_key] = _network(address, prefix_v4, prefix_v6)
    return net


def _network(address: str, prefix_v4: int, prefix_v6: int) -> str:
    key = ip_key(address)
    if key is None:
        return address.lower()
    bits, value = key
    prefix = prefix_v4 if bits == 32 else prefix_v6
    shift = bits - prefix
    masked = (value >> shift) << shift
    if bits == 32:
        text = socket.inet_ntop(socket.AF_INET, masked.to_bytes(4, "big"))
    else:
        text = socket.inet_ntop(socket.AF_INET6, masked.to_bytes(16, "big"))
    return f"{text}/{prefix}"


class NetworkSet:
    """A set of networks answering ``address in set`` with one lookup per prefix length."""

    def __init__(self, networks=()):
        self.tables: dict[int, dict[int, set[int]]] = {32: {}, 128: {}}
        for net in networks:
            self.add(net)

    def add(self, net: ipaddress.IPv4Network | ipaddress.IPv6Network | str) -> None:
        if isinstance(net, str):
            net = ipaddress.ip_network(net, strict=False)
        bits = 32 if net.version == 4 else 128
        self.tables[bits].setdefault(net.prefixlen, set()).add(int(net.network_address))

    def __bool__(self) -> bool:
        return bool(self.tables[32] or self.tables[128])

    def __contains__(self, address: str) -> bool:
        key = ip_key(address)
        if key is None:
            return False
        bits, value = key
        for prefixlen, networks in self.tables[bits].items():
            shift = bits - prefixlen
            if (value >> shift) << shift in networks:
                return True
        return False
