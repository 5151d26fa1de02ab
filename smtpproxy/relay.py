"""The downstream side: one aiosmtplib connection to Postfix's re-injection listener.

The proxy drives it in lockstep with its own client: XFORWARD and MAIL when
the client sends MAIL, each RCPT as it arrives, and the message at end-of-data.
Replies come back as (code, text) so the proxy can relay them verbatim.

Every way the downstream can fail (refused connection, timeout, lost
connection, garbage) surfaces as one exception, DownstreamError, whose text
is for the log only; the proxy answers its client with a generic 451.

Replies pair with commands only by their order. A connection with a command
in flight (``busy``: written, its reply not yet read) therefore never carries
another one: a command that fails or is cancelled (the client went away, a
drain ran out) closes its connection, and the pool takes back only ``idle``
connections, so a late reply can never be read as the answer to someone
else's command.

Message bytes are sent as they are: the proxy already holds them with CRLF
line ends (wire.py's read_data made them so), so the only transformation is
SMTP dot-stuffing (wire.py's dot_stuff, safe on its own), done here rather
than by aiosmtplib's DATA helper, which would send it its own way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import NamedTuple

import aiosmtplib
from aiosmtplib import SMTPResponse

from smtpproxy import xforward
from smtpproxy.wire import dot_stuff


class DownstreamError(Exception):
    """The downstream listener could not be used; the text is for the log."""


class Reply(NamedTuple):
    code: int
    text: str

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def relayable(self) -> bool:
        """Only final replies of the three legal classes are passed to the client."""
        return self.code // 100 in (2, 4, 5) and self.code < 600

    @classmethod
    def parse(cls, reply: str) -> Reply:
        """One of our own replies (replies.py, "451 4.3.0 text") as a Reply."""
        code, _, text = reply.partition(" ")
        return cls(int(code), text)

    def __str__(self) -> str:
        return f"{self.code} {self.text}".replace("\n", " / ")


_FAILURES = (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError, ValueError)




class Downstream:
    def __init__(
        self,
        host: str,
        port: int,
        helo_name: str,
        connect_timeout_s: float,
        reply_timeout_s: float,
    ):
        self.host = host
        self.port = port
        self.helo_name = helo_name
        self.connect_timeout_s = connect_timeout_s
        self.reply_timeout_s = reply_timeout_s
        self._smtp: aiosmtplib.SMTP | None = None
        self.xforward_attributes: frozenset[str] = frozenset()
        self.in_transaction = False
        self.busy = False  # a command is in flight: written, its reply not yet read
        self.chunking = False
        self.created = 0.0
        self.idle_since = 0.0
        self.transactions = 0

    @property
    def connected(self) -> bool:
        return self._smtp is not None and self._smtp.is_connected

    @property
    def idle(self) -> bool:
        """Fit to serve another session: connected, between transactions, no reply due."""
        return self.connected and not self.busy and not self.in_transaction

    async def connect(self) -> None:
        smtp = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            local_hostname=self.helo_name,
            timeout=self.connect_timeout_s,
            start_tls=False,
            use_tls=False,
        )
        try:
            await smtp.connect()
            reply = await smtp.ehlo(timeout=self.reply_timeout_s)
        except _FAILURES as exc:
            smtp.close()
            raise DownstreamError(f"connect to {self.host}:{self.port}: {_describe(exc)}") from exc
        except BaseException:
            smtp.close()  # cancelled: the half-made connection is nobody's
            raise
        if reply.code != 250:
            smtp.close()
            raise DownstreamError(f"EHLO refused: {reply.code} {reply.message}")
        self._smtp = smtp
        self.xforward_attributes = frozenset(
            smtp.esmtp_extensions.get("xforward", "").upper().split()
        )
        self.chunking = "chunking" in smtp.esmtp_extensions

    async def _round_trip(self, what: str, exchange: Awaitable[SMTPResponse]) -> SMTPResponse:
        """Await one command's reply with the connection marked busy meanwhile.

        A failure closes the connection and raises DownstreamError. So does a
        cancellation, which is re-raised: the reply is still due and would be
        read as the reply to whatever this connection is asked next.
        """
        self.busy = True
        try:
            response = await exchange
        except _FAILURES as exc:
            self.close()
            raise DownstreamError(f"{what}: {_describe(exc)}") from exc
        except BaseException:
            self.close()
            raise
        self.busy = False
        return response

    async def _execute(self, line: bytes) -> Reply:
        if not self.connected:
            raise DownstreamError("connection lost")
        assert self._smtp is not None
        response = await self._round_trip(
            f"{line[:20]!r}...", self._smtp.execute_command(line, timeout=self.reply_timeout_s))
        if response.code == 421:
            # The listener is going away; nothing after this can succeed.
            self.close()
            raise DownstreamError(f"listener closing: {response.code} {response.message}")
        return Reply(response.code, response.message)

    async def begin(self, attrs: dict[str, str | None], mail_arg: bytes) -> Reply:
        """XFORWARD the client's identity, then MAIL with the client's own arguments.

        Every attribute the listener supports is sent, unknown ones as
        [UNAVAILABLE], so nothing of an earlier session on a pooled connection
        can leak into this one.
        """
        full = {name: attrs.get(name) for name in xforward.ATTRIBUTES}
        for command in xforward.format_commands(full, self.xforward_attributes):
            reply = await self._execute(command.encode("utf-8", "surrogateescape"))
            if not reply.ok:
                raise DownstreamError(f"XFORWARD refused: {reply}")
        reply = await self._execute(b"MAIL " + mail_arg)
        self.in_transaction = reply.ok
        self.transactions += 1
        return reply

    async def rcpt(self, rcpt_arg: bytes) -> Reply:
        return await self._execute(b"RCPT " + rcpt_arg)

    async def send_message(self, content: bytes) -> Reply:
        """The message, and the listener's verdict on it.

        With CHUNKING (Postfix has it) this is one ``BDAT n LAST`` write and
        one reply: no 354 round trip and no dot-stuffing. Otherwise DATA.
        """
        if self.chunking:
            return await self._final_reply(b"BDAT %d LAST\r\n" % len(content) + content, "BDAT")
        reply = await self._execute(b"DATA")
        if reply.code != 354:
            # Only 354 leads to the message. A 4xx or 5xx is the listener's
            # refusal, relayed; anything else (a 250, a greeting, a reply meant
            # for another command) means the message was never taken, and is a
            # failure. Either way nothing is queued and this connection is done.
            self.close()
            if reply.code // 100 in (4, 5):
                return reply
            raise DownstreamError(f"DATA answered {reply}, not 354")
        return await self._final_reply(dot_stuff(content), "end of data")

    async def _final_reply(self, payload: bytes, what: str) -> Reply:
        """Write the message payload; the listener's reply ends the transaction."""
        if not self.connected:
            self.close()
            raise DownstreamError(f"{what}: connection lost")
        assert self._smtp is not None and self._smtp.protocol is not None
        protocol = self._smtp.protocol

        async def exchange() -> SMTPResponse:
            protocol.write(payload)
            return await protocol.read_response(timeout=self.reply_timeout_s)

        response = await self._round_trip(what, exchange())
        self.in_transaction = False
        return Reply(response.code, response.message)

    async def reset(self) -> None:
        """Abandon the open transaction so that nothing is queued."""
        if not self.in_transaction:
            return
        self.in_transaction = False
        reply = await self._execute(b"RSET")
        if not reply.ok:
            self.close()
            raise DownstreamError(f"RSET refused: {reply}")

    async def abandon(self) -> str | None:
        """``reset()`` that never raises: the failure's text for the log, or None.
        A connection whose RSET failed is closed, so nothing of it is queued."""
        try:
            await self.reset()
        except DownstreamError as exc:
            return str(exc)
        return None

    async def quit(self) -> None:
        """Polite goodbye; never raises."""
        if self.connected:
            try:
                await self._execute(b"QUIT")
            except DownstreamError:
                pass
        self.close()

    def close(self) -> None:
        """Drop the connection at once. Postfix discards an unfinished transaction."""
        self.in_transaction = False
        self.busy = False  # nothing can be in flight on a closed connection
        if self._smtp is not None:
            self._smtp.close()
            self._smtp = None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError | aiosmtplib.SMTPTimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"


class DownstreamPool:
    """Idle downstream connections kept for the next session.

    Postfix opens one proxy connection per transaction; connecting, greeting
    and EHLO downstream each time costs both this process and the
    re-injection smtpd more than the transaction itself. A connection goes
    back to the pool only between transactions, and is retired after
    ``max_age_s`` or ``max_transactions`` so that a Postfix reload reaches it
    soon, and after ``idle_timeout_s`` unused, well before smtpd_timeout.
    """

    def __init__(self, factory, max_idle: int, idle_timeout_s: float,
                 max_age_s: float = 300.0, max_transactions: int = 1000):
        self._factory = factory
        self._idle: list[Downstream] = []
        self._closing: set[asyncio.Task] = set()  # polite QUITs under way
        self.max_idle = max_idle
        self.idle_timeout_s = idle_timeout_s
        self.max_age_s = max_age_s
        self.max_transactions = max_transactions

    def _usable(self, d: Downstream, now: float) -> bool:
        return (d.idle and now - d.idle_since < self.idle_timeout_s
                and now - d.created < self.max_age_s and d.transactions < self.max_transactions)

    def take_idle(self) -> Downstream | None:
        """A pooled connection, or None; the caller must be ready for it to be stale."""
        now = time.monotonic()
        while self._idle:
            d = self._idle.pop()
            if self._usable(d, now):
                return d
            self._retire(d)
        return None

    def _retire(self, d: Downstream) -> None:
        task = asyncio.get_running_loop().create_task(d.quit())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def connect(self) -> Downstream:
        d = self._factory()
        await d.connect()
        d.created = time.monotonic()
        return d

    def release(self, d: Downstream) -> None:
        """Give back a connection that is ``idle`` (between transactions, no reply
        due); any other is closed, however the session ended."""
        d.idle_since = time.monotonic()
        if self._usable(d, d.idle_since) and len(self._idle) < self.max_idle:
            self._idle.append(d)
        elif d.idle:
            self._retire(d)
        else:
            d.close()

    def expire(self) -> None:
        now = time.monotonic()
        keep = []
        for d in self._idle:
            if self._usable(d, now):
                keep.append(d)
            else:
                self._retire(d)
        self._idle = keep

    def close(self) -> None:
        for d in self._idle:
            d.close()
        self._idle = []
