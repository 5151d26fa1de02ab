"""The contract's one client-address parser: every form Postfix and the kernel write, normalised once."""

from __future__ import annotations

import ipaddress

import pytest

from smtpproxy.transaction import ClientInfo, parse_client_address


@pytest.mark.parametrize("label, text, expected", [
    ("IPv4", "192.0.2.1", "192.0.2.1"),
    ("IPv6", "2001:db8::1", "2001:db8::1"),
    ("XFORWARD's IPV6: prefix", "IPV6:2001:db8::1", "2001:db8::1"),
    ("Postfix's IPv6: prefix", "IPv6:2001:DB8::1", "2001:db8::1"),
    ("brackets", "[192.0.2.1]", "192.0.2.1"),
    ("address literal", "[IPv6:2001:db8::1]", "2001:db8::1"),
    ("scope id", "fe80::1%eth0", "fe80::1"),
    ("IPv4-mapped IPv6 is IPv4", "::ffff:192.0.2.1", "192.0.2.1"),
    ("unavailable", "[UNAVAILABLE]", None),
    ("temporarily unavailable", "[TEMPUNAVAIL]", None),
    ("unknown", "unknown", None),
    ("empty", "", None),
    ("none", None, None),
    ("garbage", "192.0.2.300", None),
])
def test_parse_client_address(label, text, expected):
    got = parse_client_address(text)
    assert got == (ipaddress.ip_address(expected) if expected else None), label


def test_client_info_parses_its_address_once():
    client = ClientInfo(addr="IPV6:::ffff:198.51.100.7")
    assert client.ip == ipaddress.IPv4Address("198.51.100.7")
    assert client.ip is client.ip  # cached: every check reads the same object
