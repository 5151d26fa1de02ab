"""A scripted re-injection listener: a downstream that misbehaves on purpose.

An asyncio SMTP server for unit tests of the relay. It speaks enough ESMTP
for the proxy (EHLO advertising XFORWARD and optionally CHUNKING; XFORWARD,
MAIL, RCPT, DATA and its payload, BDAT, RSET, NOOP, QUIT) and answers like
Postfix, except where the script says otherwise. The script maps a verb to
the steps its next occurrences get, in order, across all connections:

    ScriptedDownstream(script={"MAIL": [Hold()], "END": ["554 5.7.1 Refused"]})

- a string is the reply;
- ``Hold(reply)`` keeps the reply back: until ``release`` is set, or, without
  one, until the connection's next command line arrives, so that the reply
  comes late, after the client's next command, as from a slow listener. A
  connection closed meanwhile never gets it. ``reached`` is set when the
  held command arrives, so a test can act while it is in flight.

"END" is the reply to the end of a message (after DATA's payload, or to
``BDAT n LAST``); "GREETING" the banner. When the steps of a verb run out,
it gets the default reply again.

Everything is recorded per connection: the command lines, the messages
received (dot-stuffing undone), and whether the peer closed it.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

DEFAULTS = {
    "GREETING": "220 scripted.example.test ESMTP",
    "XFORWARD": "250 2.0.0 Ok",
    "MAIL": "250 2.1.0 Ok",
    "RCPT": "250 2.1.5 Ok",
    "DATA": "354 End data with <CR><LF>.<CR><LF>",
    "END": "250 2.0.0 Ok: queued as SCRIPTED",
    "RSET": "250 2.0.0 Ok",
    "NOOP": "250 2.0.0 Ok",
    "QUIT": "221 2.0.0 Bye",
}
UNKNOWN = "502 5.5.2 Error: command not recognized"
XFORWARD_ATTRIBUTES = "NAME ADDR PORT PROTO HELO IDENT SOURCE"


@dataclass
class Hold:
    """A reply held back; see the module docstring."""

    reply: str | None = None  # None: the verb's default reply
    release: asyncio.Event | None = None
    reached: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Connection:
    number: int
    commands: list[bytes] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)
    closed_by_peer: bool = False  # the client (the proxy) closed it
    done: asyncio.Event = field(default_factory=asyncio.Event)


class _Closed(Exception):
    """The peer closed the connection."""


class ScriptedDownstream:
    def __init__(self, script: dict[str, list] | None = None, chunking: bool = True,
                 xforward: bool = True):
        self.script = {verb: list(steps) for verb, steps in (script or {}).items()}
        self.chunking = chunking
        self.xforward = xforward
        self.connections: list[Connection] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def __aenter__(self) -> ScriptedDownstream:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, limit=1 << 24)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        assert self._server is not None
        self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def messages(self) -> list[bytes]:
        return [m for c in self.connections for m in c.messages]

    def commands(self, verb: bytes) -> list[bytes]:
        """Every command line with this verb, on any connection."""
        return [line for c in self.connections for line in c.commands
                if line.split(b" ", 1)[0].upper() == verb]

    # ------------------------------------------------------------------ one connection

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        conn = Connection(len(self.connections) + 1)
        self.connections.append(conn)
        session = _Session(self, conn, reader, writer)
        try:
            await session.converse()
        except (_Closed, ConnectionError):
            conn.closed_by_peer = True
        except asyncio.CancelledError:
            pass  # the listener stops (the task is the connection's own: asyncio would log it)
        finally:
            writer.close()
            conn.done.set()

    def _step(self, verb: str):
        steps = self.script.get(verb)
        return steps.pop(0) if steps else DEFAULTS.get(verb, UNKNOWN)

    def _ehlo(self) -> str:
        keywords = ["PIPELINING", "SIZE 52428800", "8BITMIME", "SMTPUTF8", "DSN",
                    "ENHANCEDSTATUSCODES"]
        if self.xforward:
            keywords.append(f"XFORWARD {XFORWARD_ATTRIBUTES}")
        if self.chunking:
            keywords.append("CHUNKING")
        lines = ["scripted.example.test", *keywords]
        return "\r\n".join(f"250{' ' if i == len(lines) - 1 else '-'}{line}"
                           for i, line in enumerate(lines))


class _Session:
    def __init__(self, server: ScriptedDownstream, conn: Connection,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.server = server
        self.conn = conn
        self.reader = reader
        self.writer = writer
        self.pending: bytes | None = None  # a line read ahead while a reply was held
        self.chunks = b""  # BDAT chunks of the message so far

    async def _line(self) -> bytes:
        if self.pending is not None:
            line, self.pending = self.pending, None
            return line
        try:
            return await self.reader.readuntil(b"\r\n")
        except asyncio.IncompleteReadError as exc:
            raise _Closed from exc

    async def _write(self, reply: str) -> None:
        self.writer.write(reply.encode("utf-8") + b"\r\n")
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()

    async def _answer(self, verb: str, default: str | None = None) -> str:
        """Send the scripted reply to ``verb``; returns it."""
        step = self.server._step(verb)
        if isinstance(step, Hold):
            step.reached.set()
            if step.release is not None:
                await step.release.wait()
            else:
                self.pending = await self._line()  # raises _Closed: the reply is never sent
            reply = step.reply or DEFAULTS.get(verb, UNKNOWN)
        else:
            reply = step
        await self._write(reply)
        return reply

    async def converse(self) -> None:
        await self._answer("GREETING")
        while True:
            line = await self._line()
            self.conn.commands.append(line[:-2])
            verb = line.split(b" ", 1)[0].strip().upper().decode("ascii", "replace")
            if verb in ("EHLO", "HELO"):
                await self._write(self.server._ehlo())
            elif verb == "DATA":
                if (await self._answer("DATA")).startswith("354"):
                    await self._read_data()
            elif verb == "BDAT":
                await self._read_bdat(line)
            elif verb == "QUIT":
                await self._answer("QUIT")
                return
            else:
                await self._answer(verb)

    async def _read_data(self) -> None:
        lines = []
        while (line := await self._line()) != b".\r\n":
            lines.append(line[1:] if line.startswith(b".") else line)
        self.conn.messages.append(b"".join(lines))
        await self._answer("END")

    async def _read_bdat(self, line: bytes) -> None:
        args = line.split()
        try:
            size = int(args[1])
        except (IndexError, ValueError):
            await self._write("501 5.5.4 Syntax: BDAT count [LAST]")
            return
        try:
            chunk = await self.reader.readexactly(size)
        except asyncio.IncompleteReadError as exc:
            raise _Closed from exc
        last = len(args) > 2 and args[2].upper() == b"LAST"
        self.chunks += chunk
        if not last:
            await self._write(f"250 2.0.0 Ok: {size} bytes")
            return
        self.conn.messages.append(self.chunks)
        self.chunks = b""
        await self._answer("END")
