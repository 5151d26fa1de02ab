"""A client that misbehaves at the protocol level gets a deliberate reply, never a surprise.

The proxy runs in this process (a real ProxyService on a loopback port) with a
recording fake downstream pool, so the tests see exactly which commands the
proxy acted on: nothing after a DATA timeout, every pipelined command of a
client that half-closed, a 421 before an idle close, enhanced status codes on
aiosmtpd's own replies, the in-flight byte budget, XFORWARD and HELO values
with control characters, and bare line ends in the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from smtpproxy import xforward
from smtpproxy.common import config
from smtpproxy.common.log import quote
from smtpproxy.daemon import ProxyService
from smtpproxy.relay import Reply
from smtpproxy.transaction import NoScan
from tests.support.net import free_port

WAIT_S = 20  # every wait below stops by itself well before this
LATENCY_S = 0.01  # the fake downstream answers after a network round trip, not at once


class FakeDownstream:
    """Answers like a re-injection listener and records what it was asked."""

    chunking = True

    def __init__(self, pool: FakePool):
        self.pool = pool
        self.connected = True
        self.in_transaction = False
        self.xforward_attributes = frozenset(xforward.ATTRIBUTES)

    @property
    def idle(self) -> bool:
        return self.connected and not self.in_transaction

    async def begin(self, attrs, mail_arg: bytes) -> Reply:
        await asyncio.sleep(LATENCY_S)
        self.pool.events.append(("MAIL", mail_arg, dict(attrs)))
        self.in_transaction = True
        return Reply(250, "2.1.0 Ok")

    async def rcpt(self, rcpt_arg: bytes) -> Reply:
        await asyncio.sleep(LATENCY_S)
        self.pool.events.append(("RCPT", rcpt_arg))
        return Reply(250, "2.1.5 Ok")

    async def send_message(self, content: bytes) -> Reply:
        await asyncio.sleep(LATENCY_S)
        self.pool.events.append(("MESSAGE", content))
        self.in_transaction = False
        if self.pool.hold is not None:
            await self.pool.hold.wait()
        return Reply(250, "2.0.0 Ok: queued as FAKE")

    async def reset(self) -> None:
        self.in_transaction = False

    async def abandon(self) -> str | None:
        self.pool.events.append(("RSET",))
        self.in_transaction = False
        return None

    async def quit(self) -> None:
        self.close()

    def close(self) -> None:
        self.connected = False
        self.in_transaction = False


class FakePool:
    """Stands in for DownstreamPool; every use is an event, recorded when it happens."""

    def __init__(self):
        self.events: list[tuple] = []
        self.hold: asyncio.Event | None = None

    def take_idle(self):
        self.events.append(("take_idle",))
        return None

    async def connect(self) -> FakeDownstream:
        self.events.append(("connect",))
        return FakeDownstream(self)

    def release(self, downstream) -> None:
        downstream.close()

    def expire(self) -> None:
        pass

    def close(self) -> None:
        pass

    def verbs(self) -> list[str]:
        return [e[0] for e in self.events if e[0] in ("MAIL", "RCPT", "MESSAGE", "RSET")]


@contextlib.asynccontextmanager
async def running_proxy(**proxy_settings):
    port = free_port()
    overrides = {
        "proxy.hostname": "filter.example.test",
        "proxy.listeners": [{"name": "inbound", "listen": f"127.0.0.1:{port}",
                             "profile": "inbound", "downstream": "127.0.0.1:9"}],
        "scan.enabled": False,
        "proxy.drain_timeout_s": 1.0,  # a test that leaves a transaction open stops quickly
    }
    overrides.update({f"proxy.{k}": v for k, v in proxy_settings.items()})
    service = ProxyService(config.load(None, overrides), hook=NoScan())
    pool = FakePool()
    service.pool = lambda name: pool
    await service.start()
    try:
        yield service, pool, port
    finally:
        await service.stop()


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> Client:
        client = cls(*await asyncio.open_connection("127.0.0.1", port, limit=1 << 20))
        assert (await client.reply()).startswith(b"220 ")
        return client

    async def reply(self) -> bytes:
        """One whole reply (all its lines), or b"" at EOF."""
        lines = b""
        while True:
            line = await asyncio.wait_for(self.reader.readline(), WAIT_S)
            if not line:
                return lines
            lines += line
            if line[3:4] != b"-":
                return lines

    async def command(self, line: bytes) -> bytes:
        self.writer.write(line + b"\r\n")
        return await self.reply()

    async def transaction_until_data(self) -> None:
        assert (await self.command(b"EHLO before-filter.example.test")).startswith(b"250")
        assert (await self.command(b"MAIL FROM:<sender@example.org>")).startswith(b"250")
        assert (await self.command(b"RCPT TO:<rcpt@example.net>")).startswith(b"250")
        assert (await self.command(b"DATA")).startswith(b"354")

    async def rest(self) -> bytes:
        """Everything until the proxy closes the connection."""
        return await asyncio.wait_for(self.reader.read(), WAIT_S)

    def close(self) -> None:
        self.writer.close()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


# ------------------------------------------------------------------ D14: DATA timeout


def test_data_timeout_runs_no_buffered_line_as_a_command():
    """Message lines still buffered when DATA times out are never read as commands."""

    async def scenario():
        async with running_proxy(data_timeout_s=0.5) as (_service, pool, port):
            client = await Client.connect(port)
            await client.transaction_until_data()
            # No line "." anywhere: the reader keeps all of it buffered.
            client.writer.write(b"MAIL FROM:<smuggled@example.org>\r\nRCPT TO:<victim@example.net>\r\n"
                                b"NOOP\r\nNOOP\r\n")
            assert (await client.reply()).startswith(b"421 4.4.2")
            assert await client.rest() == b"", "nothing may follow the 421"
            return pool.verbs(), [e for e in pool.events if e[0] in ("take_idle", "connect")]

    verbs, connects = run(scenario())
    assert verbs == ["MAIL", "RCPT"], verbs
    assert len(connects) <= 2, f"a downstream connection was sought after the timeout: {connects}"


# ------------------------------------------------------------------ D14: idle timeout


def test_idle_timeout_says_421_before_closing():
    async def scenario():
        async with running_proxy(command_timeout_s=0.5) as (_service, _pool, port):
            client = await Client.connect(port)
            assert (await client.command(b"EHLO before-filter.example.test")).startswith(b"250")
            return await client.rest()

    assert run(scenario()).startswith(b"421 4.4.2 ")


# ------------------------------------------------------------------ D14: half-close


def test_pipelined_transaction_with_half_close_gets_every_reply():
    async def scenario():
        async with running_proxy() as (_service, pool, port):
            client = await Client.connect(port)
            client.writer.write(b"EHLO before-filter.example.test\r\nMAIL FROM:<sender@example.org>\r\n"
                                b"RCPT TO:<rcpt@example.net>\r\nDATA\r\nSubject: pipelined\r\n\r\n"
                                b"body\r\n.\r\nQUIT\r\n")
            client.writer.write_eof()
            return await client.rest(), pool.verbs()

    raw, verbs = run(scenario())
    codes = [line[:3] for line in raw.split(b"\r\n") if line and line[3:4] != b"-"]
    assert codes == [b"250", b"250", b"250", b"354", b"250", b"221"], raw
    assert verbs == ["MAIL", "RCPT", "MESSAGE"]


def test_half_close_mid_transaction_queues_nothing():
    async def scenario():
        async with running_proxy() as (_service, pool, port):
            client = await Client.connect(port)
            client.writer.write(b"EHLO before-filter.example.test\r\nMAIL FROM:<sender@example.org>\r\n"
                                b"RCPT TO:<rcpt@example.net>\r\nDATA\r\nSubject: cut\r\n\r\nbody\r\n")
            client.writer.write_eof()
            return await client.rest(), pool.verbs()

    raw, verbs = run(scenario())
    assert raw.count(b"\r\n") == raw.count(b"250 ") + raw.count(b"250-") + 1  # 354 last, no 250 for DATA
    assert raw.rstrip().endswith(b"354 End data with <CR><LF>.<CR><LF>")
    assert "MESSAGE" not in verbs


# ------------------------------------------------------------------ D14: enhanced status codes


@pytest.mark.parametrize("length", [5000, 70_000], ids=["over-command-limit", "over-reader-limit"])
def test_command_line_too_long_gets_an_enhanced_status_code(length):
    async def scenario():
        async with running_proxy() as (_service, _pool, port):
            client = await Client.connect(port)
            assert (await client.command(b"EHLO before-filter.example.test")).startswith(b"250")
            too_long = await client.command(b"NOOP " + b"x" * length)
            assert (await client.command(b"NOOP")).startswith(b"250"), "the session goes on"
            return too_long

    assert run(scenario()).startswith(b"500 5.5.2 ")


@pytest.mark.parametrize("line", [b"BOGUS", b"\xff\xfe", b""], ids=["unknown", "not-ascii", "empty"])
def test_aiosmtpd_own_errors_get_enhanced_status_codes(line):
    async def scenario():
        async with running_proxy() as (_service, _pool, port):
            client = await Client.connect(port)
            return await client.command(line)

    reply = run(scenario())
    assert reply[:4] in (b"500 ", b"502 ") and reply[4:10] == b"5.5.2 ", reply


# ------------------------------------------------------------------ D14: log quoting


@pytest.mark.parametrize("raw, logged", [
    ("plain", "plain"),
    ("a b", '"a b"'),
    ("cr\rlf\nnul\0tab\tdel\x7f", '"cr\\rlf\\nnul\\x00tab\\tdel\\x7f"'),
    ("quote\"back\\slash", '"quote\\"back\\\\slash"'),
    ("esc\x1b[31m", '"esc\\x1b[31m"'),
    ("line\u2028sep", '"line\\u2028sep"'),
    ("caf\u00e9", "caf\u00e9"),
], ids=["bare", "space", "controls", "quote", "escape-sequence", "unicode-separator", "printable-unicode"])
def test_log_quote_leaves_no_control_character(raw, logged):
    assert quote(raw) == logged
    assert all(c.isprintable() for c in quote(raw))


# ------------------------------------------------------------------ D5: XFORWARD, HELO


@pytest.mark.parametrize("arg", [
    "HELO=evil+0D+0AX-Injected:+20yes", "HELO=evil+0Ax", "HELO=evil+0Dx", "NAME=a+00b",
    "IDENT=x+1By", "ADDR=192.0.2.1+7F", "PROTO=ESMTP+09",
], ids=["crlf", "lf", "cr", "nul", "esc", "del", "tab"])
def test_xforward_parse_refuses_control_characters(arg):
    with pytest.raises(xforward.XforwardError):
        xforward.parse(arg)


def test_xforward_crlf_in_helo_gets_501():
    async def scenario():
        async with running_proxy() as (_service, pool, port):
            client = await Client.connect(port)
            assert (await client.command(b"EHLO before-filter.example.test")).startswith(b"250")
            refused = await client.command(b"XFORWARD HELO=evil+0D+0AX-Injected:+20yes")
            assert (await client.command(b"XFORWARD HELO=good.example.org")).startswith(b"250")
            assert (await client.command(b"MAIL FROM:<sender@example.org>")).startswith(b"250")
            return refused, [e[2] for e in pool.events if e[0] == "MAIL"]

    refused, forwarded = run(scenario())
    assert refused.startswith(b"501 5.5.4 ")
    assert forwarded == [{"HELO": "good.example.org"}]


@pytest.mark.parametrize("verb", [b"EHLO", b"HELO"])
def test_helo_with_control_characters_gets_501(verb):
    async def scenario():
        async with running_proxy() as (_service, _pool, port):
            client = await Client.connect(port)
            return await client.command(verb + b" evil\rX-Injected: yes")

    assert run(scenario()).startswith(b"501 5.5.4 ")


# ------------------------------------------------------------------ D4: bare line ends in DATA


def test_bare_newlines_are_normalised_before_the_scan_and_the_relay():
    async def scenario():
        async with running_proxy() as (_service, pool, port):
            client = await Client.connect(port)
            await client.transaction_until_data()
            client.writer.write(b"Subject: bare\nX-Hidden: behind a bare LF\r\n\r\na\n.\nb\rc\r\n.\r\n")
            reply = await client.reply()
            return reply, [e[1] for e in pool.events if e[0] == "MESSAGE"]

    reply, messages = run(scenario())
    assert reply.startswith(b"250 ")
    assert len(messages) == 1
    assert messages[0].endswith(b"Subject: bare\r\nX-Hidden: behind a bare LF\r\n\r\na\r\n\r\nb\r\nc\r\n")


def test_bare_lf_in_reject_mode_gets_521_and_closes():
    async def scenario():
        async with running_proxy(bare_newline="reject") as (_service, pool, port):
            client = await Client.connect(port)
            await client.transaction_until_data()
            client.writer.write(b"Subject: bare\r\n\r\na\n.\nMAIL FROM:<evil@x>\r\n.\r\nNOOP\r\n")
            return await client.rest(), pool.verbs()

    raw, verbs = run(scenario())
    assert raw == b"521 5.5.2 Error: bare <LF> received\r\n"
    assert verbs == ["MAIL", "RCPT", "RSET"] or verbs == ["MAIL", "RCPT"], verbs


# ------------------------------------------------------------------ D13: in-flight budget


async def _wait_for(predicate, what: str) -> None:
    async with asyncio.timeout(WAIT_S):
        while not predicate():
            await asyncio.sleep(0.01)


def test_inflight_budget_exceeded_gets_452(caplog):
    caplog.set_level(logging.WARNING, logger="smtpproxy")

    async def scenario():
        async with running_proxy(max_message_size_bytes=200_000, max_inflight_bytes=300_000) as (
                service, pool, port):
            # Counted as read: the reader's own buffer (64 KiB) holds the rest.
            holder = await Client.connect(port)
            await holder.transaction_until_data()
            holder.writer.write(b"Subject: held\r\n\r\n" + b"h" * 70 + (b"\r\n" + b"h" * 70) * 2500)
            await _wait_for(lambda: service.inflight.used >= 120_000, "the first message read")
            late = await Client.connect(port)
            await late.transaction_until_data()
            late.writer.write(b"Subject: late\r\n\r\n" + (b"l" * 70 + b"\r\n") * 2500 + b".\r\n")
            refused = await late.reply()
            assert (await late.command(b"NOOP")).startswith(b"250"), "the session goes on"
            holder.writer.write(b"\r\n.\r\n")
            accepted = await holder.reply()
            await _wait_for(lambda: service.inflight.used == 0, "the budget released")
            # Room again: the late message goes through on retry.
            assert (await late.command(b"MAIL FROM:<sender@example.org>")).startswith(b"250")
            assert (await late.command(b"RCPT TO:<rcpt@example.net>")).startswith(b"250")
            assert (await late.command(b"DATA")).startswith(b"354")
            late.writer.write(b"Subject: retry\r\n\r\nsmall\r\n.\r\n")
            retried = await late.reply()
            metrics = service.stats.registry.render()
            return refused, accepted, retried, pool.verbs(), metrics

    refused, accepted, retried, verbs, metrics = run(scenario())
    assert refused.startswith(b"452 4.3.1 ")
    assert accepted.startswith(b"250 ") and retried.startswith(b"250 ")
    assert verbs.count("MESSAGE") == 2
    assert 'smtpproxy_inflight_refused_total{listener="inbound"} 1' in metrics
    assert "smtpproxy_inflight_bytes 0" in metrics
    assert any("proxy.max_inflight_bytes" in r.getMessage() for r in caplog.records)


def test_inflight_budget_is_released_when_the_client_goes_away():
    async def scenario():
        async with running_proxy(max_inflight_bytes=100_000_000) as (service, _pool, port):
            client = await Client.connect(port)
            await client.transaction_until_data()
            client.writer.write(b"Subject: cut\r\n\r\n" + (b"x" * 70 + b"\r\n") * 3000)
            await _wait_for(lambda: service.inflight.used >= 100_000, "the message read")
            client.writer.transport.abort()
            await _wait_for(lambda: service.inflight.used == 0, "the budget released")
            return True

    assert run(scenario())


def test_max_inflight_bytes_below_message_size_is_a_config_error():
    with pytest.raises(config.ConfigError, match="max_inflight_bytes"):
        config.load(None, {"proxy.max_message_size_bytes": 1000, "proxy.max_inflight_bytes": 999})
