"""bench/postfix_path_bench.py: the client's DATA payload and replies, the proxy's configuration."""

from __future__ import annotations

import asyncio

import pytest

from bench.postfix_path_bench import payload, proxy_config, read_reply
from bench.realtraffic_bench import RBL_ZONE, URIBL_ZONE
from smtpproxy.common import config


@pytest.mark.parametrize("raw, expected", [
    (b"a\r\n.b\r\n", b"a\r\n..b\r\n.\r\n"),            # a leading dot is doubled
    (b".\r\nx", b"..\r\nx\r\n.\r\n"),                   # a lone dot too; a CRLF is added at the end
    (b"a.b\r\n", b"a.b\r\n.\r\n"),                      # a dot inside a line is left alone
])
def test_payload_is_dot_stuffed_and_terminated(raw, expected):
    assert payload(raw) == expected


@pytest.mark.parametrize("wire, code", [
    (b"250 ok\r\n", 250),
    (b"250-mx.example\r\n250-PIPELINING\r\n250 XCLIENT NAME ADDR HELO\r\n", 250),
    (b"554 5.7.1 Spam message rejected\r\n", 554),
])
def test_read_reply_reads_one_whole_reply(wire, code):
    async def read() -> tuple[int, bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(wire + b"220 next\r\n")
        return await read_reply(reader), await reader.readline()

    assert asyncio.run(read()) == (code, b"220 next\r\n")


def test_proxy_config_is_accepted_and_scans_with_the_bench_zones(tmp_path):
    text = proxy_config(tmp_path, tmp_path / "proxy.sock", 10026, 10099, "127.0.0.1:5353", "2")
    path = tmp_path / "smtpproxy.toml"
    path.write_text(text)
    cfg = config.load(str(path))
    assert cfg.scan.enabled and cfg.proxy.workers == 2
    assert cfg.dns.nameserver == "127.0.0.1:5353"
    assert [z.zone for z in cfg.scan.dnsbl.zones] == [RBL_ZONE, URIBL_ZONE]
    assert cfg.scan.profiles.inbound.greylist is False
    assert cfg.proxy.listeners[0].listen == f"unix:{tmp_path / 'proxy.sock'}"
