"""The downstream side: one connection to Postfix's re-injection listener.

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
else's command. Bytes that arrive when no reply is due (a listener's 421
on an idle connection) make the connection unusable: they are never kept
for the next command.

The connection is a small asyncio protocol of our own (``_ReplyReader``)
rather than an SMTP client library: this is the per-message hot path, and it
needs only write a command, read its reply. It also sends XFORWARD and MAIL
in one write when the listener announces PIPELINING (RFC 2920; Postfix's own
SMTP client pipelines XFORWARD with MAIL the same way): one round trip less
per message for the proxy and the listener both.

Message bytes are sent as they are: the proxy already holds them with CRLF
line ends (wire.py's read_data made them so), so the only transformation is
SMTP dot-stuffing (wire.py's dot_stuff, safe on its own).
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import NamedTuple

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


# A reply longer than this (all its lines) is garbage, not SMTP.
MAX_REPLY_BYTES = 64 * 1024


class _ReplyReader(asyncio.Protocol):
    """One downstream connection: commands out, replies parsed in order as they arrive.

    ``due`` counts the replies owed: the greeting, then one per command
    written. A reply is queued until read; bytes when none is due, a
    malformed or overlong reply, the listener closing, all set ``failure``
    (the connection is then unusable and closed), and a reader waiting gets
    DownstreamError once the replies queued before it are read.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self._buffer = b""
        self._replies: collections.deque[Reply] = collections.deque()
        self.due = 1  # the greeting
        self._waiter: asyncio.Future | None = None
        self.failure: str | None = None
        # The reply timeout: one timer per connection, set again only when it
        # fires before the deadline of the reply then awaited (None: none is).
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    @property
    def usable(self) -> bool:
        return self.failure is None and self.transport is not None and not self.transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.failure is not None:
            return
        buffer = self._buffer + data if self._buffer else data
        while True:
            if not self.due:
                self._fail("bytes from the listener when no reply was due")
                return
            reply, buffer = _parse_reply(buffer)
            if reply is None:
                break
            if not reply.code:
                self._fail(f"malformed reply {reply}")
                return
            self.due -= 1
            self._replies.append(reply)
            if not buffer:
                break
        if len(buffer) > MAX_REPLY_BYTES:
            self._fail("reply too long")
            return
        self._buffer = buffer
        if self._replies:
            self._wake()

    def eof_received(self) -> bool:
        self._fail("connection closed by the listener")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(f"connection lost: {type(exc).__name__}: {exc}" if exc else "connection lost")

    def _fail(self, why: str) -> None:
        if self.failure is None:
            self.failure = why
        if self.transport is not None:
            self.transport.close()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _check_deadline(self) -> None:
        self._timer = None
        if self._deadline is None:
            return
        if self._loop.time() >= self._deadline:
            self._fail("timed out")
        else:
            self._timer = self._loop.call_at(self._deadline, self._check_deadline)

    def write(self, data: bytes, replies: int) -> None:
        if not self.usable:
            raise DownstreamError(self.failure or "connection lost")
        assert self.transport is not None
        self.due += replies
        self.transport.write(data)

    async def reply(self, timeout: float) -> Reply:
        """The next reply; DownstreamError when the connection failed or ``timeout`` ran out."""
        if not self._replies and self.failure is None:
            deadline = self._deadline = self._loop.time() + timeout
            timer = self._timer
            if timer is None or timer.when() > deadline:
                if timer is not None:
                    timer.cancel()
                self._timer = self._loop.call_at(deadline, self._check_deadline)
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
                self._deadline = None
        if self._replies:
            return self._replies.popleft()
        raise DownstreamError(self.failure or "connection lost")

    def close(self) -> None:
        if self.failure is None:
            self.failure = "closed"
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.transport.close()
        self._wake()


def _parse_reply(buffer: bytes) -> tuple[Reply | None, bytes]:
    """The first complete reply in ``buffer`` and the bytes after it; (None, buffer)
    when it is not complete yet. A reply whose code is not three digits has code 0."""
    lines = []
    start = 0
    while True:
        end = buffer.find(b"\n", start)
        if end < 0:
            return None, buffer
        line = buffer[start:end + 1]
        start = end + 1
        lines.append(line[4:].strip(b" \t\r\n"))
        if line[3:4] != b"-":
            break
    code_text = line[:3]
    code = int(code_text) if code_text.isdigit() and len(code_text) == 3 else 0
    return Reply(code, b"\n".join(lines).decode("utf-8", "surrogateescape")), buffer[start:]


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
        self._conn: _ReplyReader | None = None
        self.xforward_attributes: frozenset[str] = frozenset()
        self.in_transaction = False
        self.busy = False  # a command is in flight: written, its reply not yet read
        self.chunking = False
        self.pipelining = False
        self.created = 0.0
        self.idle_since = 0.0
        self.transactions = 0

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.usable

    @property
    def idle(self) -> bool:
        """Fit to serve another session: connected, between transactions, no reply due."""
        return self.connected and not self.busy and not self.in_transaction

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        where = f"connect to {self.host}:{self.port}"
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(lambda: _ReplyReader(loop), self.host, self.port)
        except (OSError, TimeoutError) as exc:
            raise DownstreamError(f"{where}: {_describe(exc)}") from exc
        self._conn = conn
        try:
            # Connected is not yet usable: a listener that accepts but never
            # greets (a stuck smtpd, a full backlog) fails within the connect timeout.
            greeting = await conn.reply(self.connect_timeout_s)
            if greeting.code != 220:
                raise DownstreamError(f"greeting {greeting}")
            reply = await self._execute(b"EHLO " + self.helo_name.encode("ascii", "replace"))
        except DownstreamError as exc:
            self.close()
            raise DownstreamError(f"{where}: {exc}") from exc
        except BaseException:
            self.close()  # cancelled: the half-made connection is nobody's
            raise
        if reply.code != 250:
            self.close()
            raise DownstreamError(f"EHLO refused: {reply}")
        extensions = {}
        for line in reply.text.split("\n")[1:]:
            keyword, _, params = line.partition(" ")
            extensions[keyword.upper()] = params
        self.xforward_attributes = frozenset(extensions.get("XFORWARD", "").upper().split())
        self.chunking = "CHUNKING" in extensions
        self.pipelining = "PIPELINING" in extensions

    async def _exchange(self, lines: list[bytes]) -> list[Reply]:
        """Write command lines in one go and read one reply for each.

        The connection is marked busy meanwhile. A failure closes it and
        raises DownstreamError. So does a cancellation, which is re-raised:
        the replies are still due and would be read as the replies to
        whatever this connection is asked next.
        """
        conn = self._conn
        if conn is None or not conn.usable:
            raise DownstreamError("connection lost")
        for line in lines:
            if b"\r" in line or b"\n" in line:
                raise DownstreamError("control character in a command")  # never sent
        self.busy = True
        replies: list[Reply] = []
        try:
            conn.write(b"\r\n".join(lines) + b"\r\n", len(lines))
            for _ in lines:
                replies.append(await conn.reply(self.reply_timeout_s))
        except DownstreamError as exc:
            self.close()
            raise DownstreamError(f"{_verb(lines[len(replies)])}: {exc}") from exc
        except BaseException:
            self.close()
            raise
        self.busy = False
        for reply in replies:
            if reply.code == 421:
                # The listener is going away; nothing after this can succeed.
                self.close()
                raise DownstreamError(f"listener closing: {reply}")
        return replies

    async def _execute(self, line: bytes) -> Reply:
        return (await self._exchange([line]))[0]

    async def begin(self, attrs: dict[str, str | None], mail_arg: bytes) -> Reply:
        """XFORWARD the client's identity, then MAIL with the client's own arguments.

        Every attribute the listener supports is sent, unknown ones as
        [UNAVAILABLE], so nothing of an earlier session on a pooled connection
        can leak into this one. With PIPELINING the XFORWARD lines and MAIL go
        in one write; a refused XFORWARD then closes the connection, so the
        MAIL it was sent with can never become a transaction.
        """
        full = {name: attrs.get(name) for name in xforward.ATTRIBUTES}
        lines = [command.encode("utf-8", "surrogateescape")
                 for command in xforward.format_commands(full, self.xforward_attributes)]
        lines.append(b"MAIL " + mail_arg)
        if self.pipelining:
            replies = await self._exchange(lines)
        else:
            replies = [await self._execute(line) for line in lines]
        for reply in replies[:-1]:
            if not reply.ok:
                self.close()
                raise DownstreamError(f"XFORWARD refused: {reply}")
        reply = replies[-1]
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
        conn = self._conn
        if conn is None or not conn.usable:
            self.close()
            raise DownstreamError(f"{what}: connection lost")
        self.busy = True
        try:
            conn.write(payload, 1)
            reply = await conn.reply(self.reply_timeout_s)
        except DownstreamError as exc:
            self.close()
            raise DownstreamError(f"{what}: {exc}") from exc
        except BaseException:
            self.close()
            raise
        self.busy = False
        self.in_transaction = False
        return reply

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
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _verb(line: bytes) -> str:
    """A command for the log: its verb only (arguments are the client's)."""
    return line.split(b" ", 1)[0].decode("ascii", "replace")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
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
