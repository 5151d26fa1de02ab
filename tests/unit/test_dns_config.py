"""[dns] configuration: accepted nameserver forms, and errors that name the key."""

from __future__ import annotations

import pytest

from smtpproxy.common import config
from smtpproxy.common.config import ConfigError, DnsConfig, parse_nameserver
from smtpproxy.common.dns import Resolver


@pytest.mark.parametrize("text, expected", [
    ("192.0.2.53", ("192.0.2.53", 53)),
    ("127.0.0.1:5353", ("127.0.0.1", 5353)),
    ("::1", ("::1", 53)),
    ("2001:db8::53", ("2001:db8::53", 53)),
    ("[::1]:5353", ("::1", 5353)),
])
def test_nameserver_forms(text, expected):
    assert parse_nameserver(text, "dns.nameserver") == expected


@pytest.mark.parametrize("text, key", [
    ("[dns]\nnameserver = 'dns.example.com:53'", "dns.nameserver"),
    ("[dns]\nnameserver = 'dns.example.com'", "dns.nameserver"),
    ("[dns]\nnameserver = '127.0.0.1:0'", "dns.nameserver"),
    ("[dns]\nnameserver = '[::1]'", "dns.nameserver"),
    ("[dns]\ntimeout_s = 0", "dns.timeout_s"),
    ("[dns]\nattempts = 0", "dns.attempts"),
    ("[dns]\ncache_size = -1", "dns.cache_size"),
    ("[dns]\ncache_negative_ttl_s = -1", "dns.cache_negative_ttl_s"),
    ("[dns]\nedns_payload_bytes = 100", "dns.edns_payload_bytes"),
    ("[dns]\nport = 53", "dns.port"),
])
def test_bad_values_name_the_key(tmp_path, text, key):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        config.load(str(path))
    assert err.value.key == key


def test_defaults_use_the_system_resolver():
    cfg = config.load(None)
    assert cfg.dns == DnsConfig() and cfg.dns.nameserver == ""
    Resolver(cfg.dns)  # reads /etc/resolv.conf, or falls back to 127.0.0.1; never raises


def test_configured_nameserver_and_port_are_used():
    resolver = Resolver(DnsConfig(nameserver="[::1]:5353"))
    assert resolver.nameservers == [("::1", 5353)]
