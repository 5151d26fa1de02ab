"""SMTP smuggling: no end-of-data look-alike may end a message, coming in or going out.

A sender hides a second transaction (``MAIL FROM:<evil@x>`` ...) behind a
sequence that one SMTP server reads as the end of DATA and another does not
(``\\n.\\n``, ``\\r.\\r\\n``, ...). The proxy sits between two servers, so both
sides matter:

- in: ``read_data`` ends a message only at CRLF "." CRLF; everything before
  it, smuggled commands included, is the message (fed whole and one byte at a
  time), with every bare LF or CR made a CRLF (proxy.bare_newline =
  "normalize", as Postfix 3.9 does for LF), and what follows the real end
  stays for the next command;
- through: a client talks to a running proxy, and the downstream listener
  (a recording fake) sees exactly one MAIL transaction whose message holds
  the smuggled text, with DATA and with BDAT;
- out: ``dot_stuff`` must leave exactly one lone-dot line, at the very end,
  for a strict reader (CRLF.CRLF) and for a lax one that also ends DATA at
  LF.LF or LF.CRLF (DESIGN.md: "The proxy itself must never send a bare LF
  or bare CR that a downstream could read as the end of DATA"), also when
  handed content that still holds bare line ends (it is safe on its own).

The rows with a bare-LF dot were strict xfails (defect D4: ``dot_stuff``
handled only "\\r\\n." and ``read_data`` kept bare line ends); they pass now.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from smtpproxy.wire import dot_stuff, read_data
from tests.support.pipeline import ProxyProcess
from tests.support.postfix import free_port

HEAD = b"From: <sender@example.org>\r\nSubject: smuggling\r\n\r\nhello"
SMUGGLED = (b"MAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\nDATA\r\n"
            b"From: <ceo@example.org>\r\nSubject: smuggled\r\n\r\nsmuggled body")
REAL_END = b"\r\n.\r\n"
TRAILER = b"QUIT\r\n"


def smuggle(lookalike: bytes, held: bytes, read: bytes) -> tuple[bytes, bytes, bytes]:
    """(wire, held, read): a message hiding SMUGGLED behind ``lookalike``.

    ``held`` is the look-alike as a proxy that kept bare line ends would hold
    it (a dot at the start of a CRLF line is dot-stuffing and goes): what
    ``dot_stuff`` must make safe on its own. ``read`` is it as ``read_data``
    returns it: every line end a CRLF, then dot-stuffing undone on every line.
    """
    wire = HEAD + lookalike + SMUGGLED + REAL_END
    return wire, HEAD + held + SMUGGLED + b"\r\n", HEAD + read + SMUGGLED + b"\r\n"


# (label, wire up to and including the real end of data, the content with its
# bare line ends kept, the content read_data returns)
CASES = [
    ("LF dot LF", *smuggle(b"\n.\n", b"\n.\n", b"\r\n\r\n")),
    ("CR dot CRLF", *smuggle(b"\r.\r\n", b"\r.\r\n", b"\r\n\r\n")),
    ("LF dot CRLF", *smuggle(b"\n.\r\n", b"\n.\r\n", b"\r\n\r\n")),
    ("CRLF dot LF", *smuggle(b"\r\n.\n", b"\r\n\n", b"\r\n\r\n")),
    ("CRLF dot CR", *smuggle(b"\r\n.\r", b"\r\n\r", b"\r\n\r\n")),
    ("LF dot CR", *smuggle(b"\n.\r", b"\n.\r", b"\r\n\r\n")),
    ("bare LF", *smuggle(b"\n", b"\n", b"\r\n")),
    ("bare CR", *smuggle(b"\r", b"\r", b"\r\n")),
    ("dot LF first", b".\n" + SMUGGLED + REAL_END, b"\n" + SMUGGLED + b"\r\n",
     b"\r\n" + SMUGGLED + b"\r\n"),
    # Formerly a row of test_proxy_codecs' DATA table.
    ("bare LF dot is not the end", b"a\n.\r\nb\r\n.\r\n", b"a\n.\r\nb\r\n", b"a\r\n\r\nb\r\n"),
]


def rows():
    """(wire, the content read_data returns) per case."""
    return [pytest.param(wire, read, id=label) for label, wire, _held, read in CASES]


def contents():
    """Every content dot_stuff may be handed: as read, and with bare line ends kept."""
    return [pytest.param(content, id=f"{label}-{kind}")
            for label, _wire, held, read in CASES
            for kind, content in (("read", read), ("held", held))]


# ------------------------------------------------------------------ readers of the DATA payload


def data_end(payload: bytes, lax: bool) -> tuple[int, int] | None:
    """Where the first lone-dot line of a DATA payload is: (its start, its end).

    The payload starts right after the 354 reply, so it starts a line. A
    strict reader ends DATA only at CRLF "." CRLF; a lax one also at a bare
    LF "." LF or LF "." CRLF, as lenient servers do.
    """
    buf = b"\r\n" + payload
    ends = [b"\r\n.\r\n"] if not lax else [b"\n.\n", b"\n.\r\n"]
    found = [(i + end.index(b".") - 2, i + len(end) - 2) for end in ends if (i := buf.find(end)) >= 0]
    return min(found) if found else None


def parse_session(raw: bytes, lax: bool) -> tuple[list[bytes], list[dict]]:
    """The commands and the MAIL transactions a server reading ``raw`` would see.

    ``raw`` is all a client sent; a message is as it was on the wire (still
    dot-stuffed after DATA).
    """
    commands: list[bytes] = []
    transactions: list[dict] = []
    pos = 0
    while pos < len(raw):
        eol = raw.find(b"\n" if lax else b"\r\n", pos)
        if eol < 0:
            break
        line = raw[pos:eol].rstrip(b"\r") if lax else raw[pos:eol]
        pos = eol + (1 if lax else 2)
        verb, _, arg = line.partition(b" ")
        verb = verb.upper()
        commands.append(verb)
        if verb == b"MAIL":
            transactions.append({"mail": arg, "rcpt": [], "message": None})
        elif verb == b"RCPT" and transactions:
            transactions[-1]["rcpt"].append(arg)
        elif verb == b"DATA":
            found = data_end(raw[pos:], lax)
            if found is None:
                break
            if transactions:
                transactions[-1]["message"] = raw[pos:pos + found[0]]
            pos += found[1]
        elif verb == b"BDAT":
            size = int(arg.split()[0])
            if transactions:
                transactions[-1]["message"] = raw[pos:pos + size]
            pos += size
    return commands, transactions


def test_the_readers_themselves():
    """The lax reader really splits what a lenient server splits; the strict one does not."""
    stuffed = b"a\r\nb\n.\nMAIL FROM:<e@x>\r\n.\r\n"
    assert data_end(stuffed, lax=False) == (len(stuffed) - 3, len(stuffed))
    assert data_end(stuffed, lax=True) == (5, 7)
    assert data_end(b".\r\n", lax=False) == data_end(b".\r\n", lax=True) == (0, 3)
    assert data_end(b"x\n.\r\n", lax=True) == (2, 5)
    assert data_end(b"x\r\n", lax=False) is None
    session = b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n" + stuffed + b"QUIT\r\n"
    commands, transactions = parse_session(session, lax=False)
    assert commands == [b"MAIL", b"RCPT", b"DATA", b"QUIT"]
    assert [(t["mail"], t["message"]) for t in transactions] == [(b"FROM:<a@b>", stuffed[:-3])]
    commands, transactions = parse_session(session, lax=True)
    assert commands == [b"MAIL", b"RCPT", b"DATA", b"MAIL", b".", b"QUIT"]
    assert [(t["mail"], t["message"]) for t in transactions] == [(b"FROM:<a@b>", b"a\r\nb\n"),
                                                                  (b"FROM:<e@x>", None)]
    bdat = b"MAIL FROM:<a@b>\r\nBDAT 10 LAST\r\nx\n.\nMAIL\r\nQUIT\r\n"
    commands, transactions = parse_session(bdat, lax=True)
    assert commands == [b"MAIL", b"BDAT", b"QUIT"]
    assert [t["message"] for t in transactions] == [b"x\n.\nMAIL\r\n"]


# ------------------------------------------------------------------ in: read_data


async def _read_whole(wire: bytes):
    reader = asyncio.StreamReader(limit=65536)
    reader.feed_data(wire + TRAILER)
    reader.feed_eof()
    result = await read_data(reader, 10_000_000)
    return result, await reader.read()


async def _read_byte_by_byte(wire: bytes):
    reader = asyncio.StreamReader(limit=65536)

    async def feed():
        for i in range(len(wire)):
            reader.feed_data(wire[i:i + 1])
            await asyncio.sleep(0)
        reader.feed_data(TRAILER)
        reader.feed_eof()

    feeder = asyncio.create_task(feed())
    result = await read_data(reader, 10_000_000)
    await feeder
    return result, await reader.read()


@pytest.mark.parametrize("wire, content", rows())
def test_read_data_ends_only_at_the_real_end(wire, content):
    whole = asyncio.run(_read_whole(wire))
    byte_by_byte = asyncio.run(_read_byte_by_byte(wire))
    (got, size), rest = whole
    assert got == content and size == len(content)
    if SMUGGLED in wire:
        assert SMUGGLED in got, "the smuggled commands are part of the message"
    assert rest == TRAILER, "only what followed the real end of data is left for the next command"
    assert byte_by_byte == whole


# ------------------------------------------------------------------ out: dot_stuff


@pytest.mark.parametrize("content", contents())
def test_dot_stuff_ends_once_for_a_strict_reader(content):
    stuffed = dot_stuff(content)
    assert stuffed.endswith(REAL_END)
    assert data_end(stuffed, lax=False) == (len(stuffed) - 3, len(stuffed))


@pytest.mark.parametrize("content", contents())
def test_dot_stuff_ends_once_for_a_lax_reader(content):
    stuffed = dot_stuff(content)
    assert data_end(stuffed, lax=True) == (len(stuffed) - 3, len(stuffed)), (
        "a downstream that ends DATA at LF.LF or LF.CRLF would end this message early")


@pytest.mark.parametrize("content", contents())
def test_dot_stuff_sends_no_bare_cr_or_lf(content):
    stuffed = dot_stuff(content)
    pairs = stuffed.count(b"\r\n")
    assert stuffed.count(b"\r") == stuffed.count(b"\n") == pairs, (
        "a downstream that ends lines at a bare CR or LF could find an end of DATA")


# ------------------------------------------------------------------ through: a running proxy


class RecordingListener:
    """A fake re-injection listener: answers like Postfix, reads DATA strictly, records all."""

    def __init__(self, chunking: bool):
        self.chunking = chunking
        self.raw = bytearray()
        self.closed = asyncio.Event()
        self.sessions = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sessions += 1
        try:
            await self._converse(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.closed.set()

    async def _line(self, reader) -> bytes:
        line = await reader.readuntil(b"\r\n")
        self.raw += line
        return line

    async def _converse(self, reader, writer) -> None:
        writer.write(b"220 fake.example.test ESMTP\r\n")
        while True:
            line = await self._line(reader)
            verb = line.split(b" ", 1)[0].strip().upper()
            if verb == b"EHLO":
                writer.write(b"250-fake.example.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                             + (b"250-CHUNKING\r\n" if self.chunking else b"")
                             + b"250 ENHANCEDSTATUSCODES\r\n")
            elif verb == b"DATA":
                writer.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                while await self._line(reader) != b".\r\n":
                    pass
                writer.write(b"250 2.0.0 Ok: queued\r\n")
            elif verb == b"BDAT":
                self.raw += await reader.readexactly(int(line.split()[1]))
                writer.write(b"250 2.0.0 Ok: queued\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 2.0.0 Bye\r\n")
                await writer.drain()
                return
            else:
                writer.write(b"250 2.0.0 Ok\r\n")
            await writer.drain()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    """A running proxy (no scan, no pooled downstream connections) and its two ports."""
    base = tmp_path_factory.mktemp("smuggling-proxy")
    port, downstream_port = free_port(), free_port()
    process = ProxyProcess(base, f"""
state_dir = "{base / 'state'}"
[log]
level = "info"
[proxy]
hostname = "filter.example.test"
downstream_pool_size = 0
[[proxy.listeners]]
name = "inbound"
listen = "127.0.0.1:{port}"
profile = "inbound"
downstream = "127.0.0.1:{downstream_port}"
[scan]
enabled = false
""")
    process.start(port)
    try:
        yield port, downstream_port, process
    finally:
        process.stop()


async def _reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    lines = []
    while True:
        line = await reader.readuntil(b"\r\n")
        lines.append(line)
        if line[3:4] != b"-":
            return int(line[:3]), b"".join(lines)


async def _through_proxy(port: int, downstream_port: int, wire: bytes, chunking: bool):
    listener = RecordingListener(chunking)
    server = await asyncio.start_server(listener.handle, "127.0.0.1", downstream_port,
                                        reuse_address=True, limit=1 << 24)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        replies = [await _reply(reader)]
        for command in (b"EHLO before-filter.example.test", b"MAIL FROM:<sender@example.org>",
                        b"RCPT TO:<rcpt@example.net>", b"DATA"):
            writer.write(command + b"\r\n")
            replies.append(await _reply(reader))
        writer.write(wire)
        replies.append(await _reply(reader))
        writer.write(b"QUIT\r\n")
        replies.append(await _reply(reader))
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        await asyncio.wait_for(listener.closed.wait(), 20)
    finally:
        server.close()
        await server.wait_closed()
    return [code for code, _ in replies], bytes(listener.raw), listener.sessions


def _live_rows():
    params = []
    for label, wire, _held, content in CASES:
        for chunking in (False, True):
            for lax in (False, True):
                mode = "BDAT" if chunking else "DATA"
                reader = "lax" if lax else "strict"
                params.append(pytest.param(wire, content, chunking, lax, id=f"{label}-{mode}-{reader}"))
    return params


@pytest.mark.parametrize("wire, content, chunking, lax", _live_rows())
def test_proxy_passes_one_message_downstream(proxy, wire, content, chunking, lax):
    """What the listener reads, strictly or laxly: one transaction, the whole message in it."""
    port, downstream_port, process = proxy
    codes, raw, sessions = asyncio.run(
        asyncio.wait_for(_through_proxy(port, downstream_port, wire, chunking), 60))
    assert codes == [220, 250, 250, 250, 354, 250, 221], process.log_text()[-2000:]
    assert sessions == 1
    assert (b"BDAT " in raw) is chunking
    commands, transactions = parse_session(raw, lax)
    assert commands == [b"EHLO", b"MAIL", b"RCPT", b"BDAT" if chunking else b"DATA", b"QUIT"], (
        f"the listener would read these commands: {commands}")
    assert [(t["mail"], t["rcpt"]) for t in transactions] == [
        (b"FROM:<sender@example.org>", [b"TO:<rcpt@example.net>"])]
    message = transactions[0]["message"]
    if not chunking:
        message = message.replace(b"\r\n..", b"\r\n.")
        message = message[1:] if message.startswith(b"..") else message
    assert message.endswith(content), "the listener must read the whole message as one"
    if SMUGGLED in wire:
        assert b"MAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\nDATA\r\n" in message
