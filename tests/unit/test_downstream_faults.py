"""A downstream that misbehaves on purpose: the proxy never answers 250 for a message it did not get queued.

The proxy runs in-process (daemon.ProxyService) in front of a scripted
re-injection listener (tests/support/scripted_downstream.py) that holds
replies back, refuses messages, or answers DATA with something other than
354. A raw client drives the proxy, so it can leave in the middle of a
command. Every wait here is bounded and stops by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct

import pytest

from smtpproxy import replies
from smtpproxy.common import config
from smtpproxy.daemon import ProxyService
from smtpproxy.relay import Downstream, DownstreamPool
from tests.support.net import free_port
from tests.support.scripted_downstream import Hold, ScriptedDownstream

BOUND_S = 20.0  # no wait in this module lasts longer
MESSAGE = (b"From: <sender@example.org>\r\nTo: <rcpt@example.net>\r\nSubject: faults\r\n"
           b"Message-ID: <faults@example.org>\r\n\r\nbody\r\n")


async def bounded(awaitable):
    return await asyncio.wait_for(awaitable, BOUND_S)


async def until(predicate, what: str) -> None:
    try:
        async with asyncio.timeout(BOUND_S):
            while not predicate():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within {BOUND_S}s: {what}") from None


class Proxy:
    """A running ProxyService on a loopback port."""

    def __init__(self, service: ProxyService, port: int):
        self.service = service
        self.port = port
        self.stopped = False

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.service.stop()


@contextlib.asynccontextmanager
async def running_proxy(downstream_port: int, **proxy_settings):
    port = free_port()
    overrides = {
        "proxy.hostname": "filter.example.test",
        "proxy.drain_timeout_s": 10.0,
        "proxy.downstream_reply_timeout_s": BOUND_S,
        "proxy.listeners": [{"name": "inbound", "listen": f"127.0.0.1:{port}",
                             "downstream": f"127.0.0.1:{downstream_port}"}],
        "scan.enabled": False,
    }
    overrides.update({f"proxy.{key}": value for key, value in proxy_settings.items()})
    service = ProxyService(config.load(None, overrides))
    await service.start()
    proxy = Proxy(service, port)
    try:
        yield proxy
    finally:
        await proxy.stop()


class Client:
    """A raw SMTP client of the proxy: it sends exactly what it is told, and may leave at any time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> Client:
        reader, writer = await bounded(asyncio.open_connection("127.0.0.1", port))
        client = cls(reader, writer)
        code, _ = await client.reply()
        assert code == 220
        return client

    def send(self, line: bytes | str) -> None:
        self.writer.write((line.encode() if isinstance(line, str) else line) + b"\r\n")

    async def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            line = await bounded(self.reader.readuntil(b"\r\n"))
            lines.append(line[4:-2].decode("utf-8", "replace"))
            if line[3:4] != b"-":
                return int(line[:3]), "\n".join(lines)

    async def command(self, line: bytes | str) -> tuple[int, str]:
        self.send(line)
        return await self.reply()

    async def transaction(self, sender: str, rcpts: list[str], message: bytes) -> dict[str, int]:
        """MAIL, RCPTs, DATA, the message: the code of each reply, by step."""
        codes = {"MAIL": (await self.command(f"MAIL FROM:<{sender}>"))[0]}
        for i, rcpt in enumerate(rcpts):
            codes[f"RCPT{i}"] = (await self.command(f"RCPT TO:<{rcpt}>"))[0]
        codes["DATA"] = (await self.command("DATA"))[0]
        if codes["DATA"] == 354:
            self.writer.write(message + b".\r\n")
            codes["END"] = (await self.reply())[0]
        return codes

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()

    def reset(self) -> None:
        """Go away at once, as a client that crashed or was cut off: a TCP reset
        (a half-close would still be answered what was sent before it)."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


# ------------------------------------------------------------------ D1: a command in flight


@pytest.mark.parametrize("chunking", [True, False], ids=["BDAT", "DATA"])
@pytest.mark.parametrize("held", ["XFORWARD", "MAIL"])
def test_client_gone_during_mail_never_pools_the_connection(held, chunking, caplog):
    """Client 1 leaves while the downstream's reply to its XFORWARD or MAIL is
    still due; that reply comes late, after the next command on the connection.
    Were the connection pooled, client 2 would read every reply one command
    late, and hear 250 for a message the listener refused with 554."""
    caplog.set_level(logging.INFO, logger="smtpproxy")

    async def scenario():
        hold = Hold()  # the reply is written only after the connection's next command
        script = {held: [hold], "END": ["554 5.7.1 Refused by the listener"]}
        async with ScriptedDownstream(script, chunking=chunking) as downstream, \
                running_proxy(downstream.port) as proxy:
            first = await Client.connect(proxy.port)
            await first.command("EHLO before-filter.example.test")
            first.send("MAIL FROM:<first@example.org>")
            await bounded(hold.reached.wait())
            first.reset()
            await until(lambda: not proxy.service.sessions, "the proxy saw client 1 leave")
            second = await Client.connect(proxy.port)
            await second.command("EHLO before-filter.example.test")
            codes = await second.transaction("second@example.org", ["rcpt@example.net"], MESSAGE)
            await second.command("QUIT")
            await second.close()
            await proxy.stop()
            return codes, downstream

    codes, downstream = asyncio.run(scenario())
    assert codes.get("END") != 250, f"client 2 was told 250 for a message the listener refused: {codes}"
    assert codes == {"MAIL": 250, "RCPT0": 250, "DATA": 354, "END": 554}
    # The connection with the command in flight was closed, never used again:
    # client 2's transaction ran on a second one.
    assert len(downstream.connections) == 2
    first, second = downstream.connections
    assert first.closed_by_peer
    assert not any(b"second@example.org" in line for line in first.commands)
    assert [line.split()[0] for line in second.commands if not line.startswith(b"XFORWARD")][:4] == [
        b"EHLO", b"MAIL", b"RCPT", b"BDAT" if chunking else b"DATA"]
    # Client 1's unfinished transaction has its log line.
    assert any("from=<first@example.org>" in r.getMessage() and "verdict=aborted" in r.getMessage()
               for r in caplog.records)


def test_pool_never_takes_back_a_connection_with_a_command_in_flight():
    async def scenario():
        hold = Hold(release=asyncio.Event())
        async with ScriptedDownstream({"MAIL": [hold]}) as downstream:
            pool = DownstreamPool(
                lambda: Downstream("127.0.0.1", downstream.port, "filter.example.test", BOUND_S, BOUND_S),
                max_idle=4, idle_timeout_s=60)
            d = await bounded(pool.connect())
            mail = asyncio.create_task(d.begin({}, b"FROM:<a@example.org>"))
            await bounded(hold.reached.wait())
            pool.release(d)  # as a session that ends now would
            pooled = pool.take_idle()
            closed = not d.connected
            d.close()  # whatever the outcome, nothing is left behind
            hold.release.set()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await bounded(mail)
            return pooled, closed

    pooled, closed = asyncio.run(scenario())
    assert pooled is None, "a connection awaiting a reply went back to the pool"
    assert closed


def test_cancelled_command_closes_its_connection():
    async def scenario():
        hold = Hold(release=asyncio.Event())
        async with ScriptedDownstream({"MAIL": [hold]}) as downstream:
            d = Downstream("127.0.0.1", downstream.port, "filter.example.test", BOUND_S, BOUND_S)
            await bounded(d.connect())
            mail = asyncio.create_task(d.begin({}, b"FROM:<a@example.org>"))
            await bounded(hold.reached.wait())
            mail.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await mail
            connected = d.connected
            d.close()  # whatever the outcome, nothing is left behind
            hold.release.set()
            await bounded(downstream.connections[0].done.wait())
            return connected

    assert not asyncio.run(scenario()), "a connection whose reply is still due stayed open"


def test_drain_lets_a_session_waiting_for_its_mail_reply_finish():
    """SIGTERM while the downstream's MAIL reply is due: the session is inside a
    transaction, so the drain waits for it instead of cutting it with 421."""

    async def scenario():
        hold = Hold(release=asyncio.Event())
        async with ScriptedDownstream({"MAIL": [hold]}) as downstream, \
                running_proxy(downstream.port) as proxy:
            client = await Client.connect(proxy.port)
            await client.command("EHLO before-filter.example.test")
            client.send("MAIL FROM:<draining@example.org>")
            await bounded(hold.reached.wait())
            stopping = asyncio.create_task(proxy.stop())
            await until(lambda: proxy.service._stopping, "the drain began")
            await asyncio.sleep(0.2)  # a few rounds of the drain loop, which says goodbye to idle sessions
            hold.release.set()
            codes = {"MAIL": (await client.reply())[0]}
            if codes["MAIL"] == 250:
                codes["RCPT"] = (await client.command("RCPT TO:<rcpt@example.net>"))[0]
                codes["DATA"] = (await client.command("DATA"))[0]
                client.writer.write(MESSAGE + b".\r\n")
                codes["END"] = (await client.reply())[0]
                await client.command("QUIT")
            await client.close()
            await bounded(stopping)
            return codes, downstream.messages

    codes, messages = asyncio.run(scenario())
    assert codes == {"MAIL": 250, "RCPT": 250, "DATA": 354, "END": 250}
    assert len(messages) == 1 and messages[0].endswith(MESSAGE)


# ------------------------------------------------------------------ D8: control characters


CONTROL_CHARACTERS = ["\x00", "\x01", "\t", "\r", "\x1b", "\x7f"]


@pytest.mark.parametrize("char", CONTROL_CHARACTERS, ids=lambda c: f"0x{ord(c):02x}")
def test_control_character_in_mail_gets_501_without_downstream(char):
    async def scenario():
        async with ScriptedDownstream() as downstream, running_proxy(downstream.port) as proxy:
            client = await Client.connect(proxy.port)
            await client.command("EHLO before-filter.example.test")
            reply = await client.command(f"MAIL FROM:<a{char}b@example.org> SIZE=10")
            after = await client.command("MAIL FROM:<sender@example.org>")
            await client.command("QUIT")
            await client.close()
            await proxy.stop()
            return reply, after, downstream

    reply, after, downstream = asyncio.run(scenario())
    assert reply[0] == 501, f"not refused by the proxy itself: {reply}"
    assert f"{reply[0]} {reply[1]}" == replies.CONTROL_CHARACTERS
    assert after[0] == 250, "the session goes on"
    assert downstream.commands(b"MAIL") == [b"MAIL FROM:<sender@example.org>"]
    assert len(downstream.connections) == 1, "the refused MAIL cost no downstream connection"


@pytest.mark.parametrize("char", CONTROL_CHARACTERS, ids=lambda c: f"0x{ord(c):02x}")
def test_control_character_in_rcpt_gets_501_without_downstream(char):
    async def scenario():
        async with ScriptedDownstream() as downstream, running_proxy(downstream.port) as proxy:
            client = await Client.connect(proxy.port)
            await client.command("EHLO before-filter.example.test")
            await client.command("MAIL FROM:<sender@example.org>")
            reply = await client.command(f"RCPT TO:<r{char}cpt@example.net> NOTIFY=NEVER")
            codes = {"RCPT": (await client.command("RCPT TO:<rcpt@example.net>"))[0]}
            codes["DATA"] = (await client.command("DATA"))[0]
            client.writer.write(MESSAGE + b".\r\n")
            codes["END"] = (await client.reply())[0]
            await client.command("QUIT")
            await client.close()
            await proxy.stop()
            return reply, codes, downstream

    reply, codes, downstream = asyncio.run(scenario())
    assert reply[0] == 501, f"not refused by the proxy itself: {reply}"
    assert f"{reply[0]} {reply[1]}" == replies.CONTROL_CHARACTERS
    assert codes == {"RCPT": 250, "DATA": 354, "END": 250}, "the transaction goes on"
    assert downstream.commands(b"RCPT") == [b"RCPT TO:<rcpt@example.net>"]
    assert len(downstream.connections) == 1


# ------------------------------------------------------------------ D9: DATA answered without 354


@pytest.mark.parametrize("data_reply", [
    "250 2.0.0 Ok",
    "220 scripted.example.test ESMTP",
    "251 2.1.5 Ok",
    "334 VXNlcm5hbWU6",
    "999 nonsense",
])
def test_non_354_reply_to_data_is_never_250(data_reply, caplog):
    caplog.set_level(logging.INFO, logger="smtpproxy")

    async def scenario():
        async with ScriptedDownstream({"DATA": [data_reply]}, chunking=False) as downstream, \
                running_proxy(downstream.port) as proxy:
            client = await Client.connect(proxy.port)
            await client.command("EHLO before-filter.example.test")
            codes = await client.transaction("sender@example.org", ["rcpt@example.net"], MESSAGE)
            await client.command("QUIT")
            await client.close()
            await proxy.stop()
            return codes, downstream

    codes, downstream = asyncio.run(scenario())
    assert codes.get("END") != 250, f"250 for a message the listener never received: {codes}"
    assert codes == {"MAIL": 250, "RCPT0": 250, "DATA": 354, "END": 451}
    assert downstream.messages == []
    assert any("failed at end of data" in r.getMessage() for r in caplog.records)
    assert any("from=<sender@example.org>" in r.getMessage() and "verdict=tempfail" in r.getMessage()
               for r in caplog.records)


def test_refusal_of_data_is_relayed_and_nothing_is_sent():
    async def scenario():
        script = {"DATA": ["554 5.5.1 Error: no valid recipients"]}
        async with ScriptedDownstream(script, chunking=False) as downstream, \
                running_proxy(downstream.port) as proxy:
            client = await Client.connect(proxy.port)
            await client.command("EHLO before-filter.example.test")
            codes = await client.transaction("sender@example.org", ["rcpt@example.net"], MESSAGE)
            await client.command("QUIT")
            await client.close()
            await proxy.stop()
            return codes, downstream

    codes, downstream = asyncio.run(scenario())
    assert codes == {"MAIL": 250, "RCPT0": 250, "DATA": 354, "END": 554}
    assert downstream.messages == []
