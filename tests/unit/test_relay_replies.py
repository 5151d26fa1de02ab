"""The downstream connection's reply reader (relay.py): replies pair with commands
by order only, so anything that could pair one wrongly makes the connection unusable."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from smtpproxy.relay import Downstream, DownstreamError, Reply, _parse_reply
from tests.support.scripted_downstream import Hold, ScriptedDownstream

BOUND_S = 20.0


def test_parse_reply_multiline_and_partial():
    reply, rest = _parse_reply(b"250-first\r\n250-second\r\n250 last\r\n354 next")
    assert reply == Reply(250, "first\nsecond\nlast") and rest == b"354 next"
    assert _parse_reply(b"250-first\r\n250 la") == (None, b"250-first\r\n250 la")
    assert _parse_reply(b"abc oops\r\n")[0].code == 0


@contextlib.asynccontextmanager
async def raw_listener(script):
    """A listener that runs ``script(reader, writer)`` on its one connection."""
    server = await asyncio.start_server(script, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def _greet(writer: asyncio.StreamWriter, reader: asyncio.StreamReader) -> None:
    writer.write(b"220 raw.example.test ESMTP\r\n")
    await reader.readuntil(b"\r\n")  # EHLO
    writer.write(b"250-raw.example.test\r\n250-PIPELINING\r\n250 XFORWARD NAME ADDR\r\n")
    await writer.drain()


def test_reply_timeout_closes_the_connection():
    async def script(reader, writer):
        await _greet(writer, reader)
        await reader.read()  # never answers MAIL

    async def scenario():
        async with raw_listener(script) as port:
            d = Downstream("127.0.0.1", port, "filter.example.test", BOUND_S, 0.3)
            await asyncio.wait_for(d.connect(), BOUND_S)
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(DownstreamError, match="timed out"):
                await asyncio.wait_for(d.begin({}, b"FROM:<a@example.org>"), BOUND_S)
            return loop.time() - started, d.connected

    elapsed, connected = asyncio.run(scenario())
    assert 0.25 <= elapsed < 5 and not connected


def test_bytes_when_no_reply_is_due_make_the_connection_unusable():
    """A listener's 421 on an idle pooled connection must never become the
    reply to the next session's MAIL."""
    sent = asyncio.Event()

    async def script(reader, writer):
        await _greet(writer, reader)
        writer.write(b"421 4.4.2 raw.example.test Error: timeout exceeded\r\n")
        await writer.drain()
        sent.set()
        await reader.read()

    async def scenario():
        async with raw_listener(script) as port:
            d = Downstream("127.0.0.1", port, "filter.example.test", BOUND_S, BOUND_S)
            await asyncio.wait_for(d.connect(), BOUND_S)
            await asyncio.wait_for(sent.wait(), BOUND_S)
            for _ in range(100):
                if not d.idle:
                    break
                await asyncio.sleep(0.01)
            idle = d.idle
            with pytest.raises(DownstreamError):
                await asyncio.wait_for(d.begin({}, b"FROM:<a@example.org>"), BOUND_S)
            return idle

    assert not asyncio.run(scenario())


def test_malformed_reply_is_a_failure_not_a_reply():
    async def script(reader, writer):
        await _greet(writer, reader)
        await reader.readuntil(b"MAIL FROM:<a@example.org>\r\n")
        writer.write(b"2x0 what\r\n250 2.1.0 Ok\r\n")
        await writer.drain()
        await reader.read()

    async def scenario():
        async with raw_listener(script) as port:
            d = Downstream("127.0.0.1", port, "filter.example.test", BOUND_S, BOUND_S)
            await asyncio.wait_for(d.connect(), BOUND_S)
            with pytest.raises(DownstreamError, match="malformed"):
                await asyncio.wait_for(d.begin({}, b"FROM:<a@example.org>"), BOUND_S)
            return d.connected

    assert not asyncio.run(scenario())


@pytest.mark.parametrize("refused", [False, True])
def test_xforward_and_mail_pipelined(refused):
    """With PIPELINING, XFORWARD and MAIL go out together and each reply pairs
    with its command; a refused XFORWARD closes the connection, so the MAIL
    sent with it never becomes a transaction."""

    async def scenario():
        script = {"XFORWARD": ["550 5.7.1 no"]} if refused else {}
        async with ScriptedDownstream(script) as downstream:
            d = Downstream("127.0.0.1", downstream.port, "filter.example.test", BOUND_S, BOUND_S)
            await asyncio.wait_for(d.connect(), BOUND_S)
            assert d.pipelining
            try:
                reply = await asyncio.wait_for(d.begin({"ADDR": "192.0.2.1"}, b"FROM:<a@example.org>"),
                                               BOUND_S)
            except DownstreamError as exc:
                reply = exc
            rcpt = None
            if not refused:
                rcpt = await asyncio.wait_for(d.rcpt(b"TO:<b@example.net>"), BOUND_S)
                await d.quit()
            else:
                await asyncio.wait_for(downstream.connections[0].done.wait(), BOUND_S)
            return reply, rcpt, d.connected, downstream.connections[0].commands

    reply, rcpt, connected, commands = asyncio.run(scenario())
    assert [c.split()[0] for c in commands[:3]] == [b"EHLO", b"XFORWARD", b"MAIL"]
    if refused:
        assert isinstance(reply, DownstreamError) and "XFORWARD refused" in str(reply)
        assert not connected
    else:
        assert reply == Reply(250, "2.1.0 Ok") and rcpt == Reply(250, "2.1.5 Ok")


def test_held_reply_then_next_command_pairs_in_order():
    """A slow listener: MAIL's reply comes late; RCPT still gets its own."""

    async def scenario():
        release = asyncio.Event()
        async with ScriptedDownstream({"MAIL": [Hold(release=release)]}) as downstream:
            d = Downstream("127.0.0.1", downstream.port, "filter.example.test", BOUND_S, BOUND_S)
            await asyncio.wait_for(d.connect(), BOUND_S)
            mail = asyncio.create_task(d.begin({}, b"FROM:<a@example.org>"))
            await asyncio.sleep(0.2)
            assert d.busy and not mail.done()
            release.set()
            reply = await asyncio.wait_for(mail, BOUND_S)
            rcpt = await asyncio.wait_for(d.rcpt(b"TO:<b@example.net>"), BOUND_S)
            await d.quit()
            return reply, rcpt

    assert asyncio.run(scenario()) == (Reply(250, "2.1.0 Ok"), Reply(250, "2.1.5 Ok"))


def test_listener_that_never_greets_fails_within_the_connect_timeout():
    async def script(reader, writer):
        await reader.read()  # connected, never a greeting

    async def scenario():
        async with raw_listener(script) as port:
            d = Downstream("127.0.0.1", port, "filter.example.test", 0.3, BOUND_S)
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(DownstreamError, match="timed out"):
                await asyncio.wait_for(d.connect(), BOUND_S)
            return loop.time() - started, d.connected

    elapsed, connected = asyncio.run(scenario())
    assert elapsed < 5 and not connected
