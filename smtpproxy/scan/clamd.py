"""clamd's INSTREAM command, over a UNIX or TCP socket, with asyncio streams.

Written here rather than taken from PyPI: the one async client there
(aioclamd) speaks TCP only, reads its input from a file object through a
worker thread per 1 KB chunk, and does not stop sending when clamd refuses
the size half-way; the protocol itself is a few lines (clamd(8)):

    client: "zINSTREAM\\0", then chunks (4-byte big-endian length + bytes),
            then a zero length
    clamd:  "stream: OK\\0" | "stream: NAME FOUND\\0" | "... ERROR\\0"

clamd stops reading once a stream passes its StreamMaxLength and answers
"INSTREAM size limit exceeded. ERROR": the reply is read while we send, so
that answer ends the sending at once and is reported as it is.

``instream`` returns the signature name (None: clean) or raises ClamdError
with a reason fit for a log line and a symbol's options; the whole exchange
runs under one timeout.
"""

from __future__ import annotations

import asyncio
import struct

from smtpproxy.common.config import parse_hostport

CHUNK_BYTES = 256 * 1024
MAX_REPLY_BYTES = 4096


class ClamdError(Exception):
    """clamd could not give a verdict: down, slow, refused the stream, or answered nonsense."""


def parse_reply(reply: bytes) -> str | None:
    """The signature name of a FOUND reply, None for OK; ClamdError for anything else."""
    text = reply.rstrip(b"\0\n").decode("utf-8", "replace").strip()
    status = text.removeprefix("stream:").strip()
    if status == "OK":
        return None
    if status.endswith(" FOUND") and len(status) > len(" FOUND"):
        return status[:-len(" FOUND")].strip()
    raise ClamdError(f"clamd: {text[:200] or 'empty reply'}")


async def _connect(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if address.startswith("unix:"):
        return await asyncio.open_unix_connection(address[5:], limit=MAX_REPLY_BYTES)
    host, port = parse_hostport(address)
    return await asyncio.open_connection(host, port, limit=MAX_REPLY_BYTES)


async def instream(address: str, data: bytes, timeout_s: float) -> str | None:
    """Scan ``data``; the signature name when clamd found one, None when clean."""
    try:
        async with asyncio.timeout(timeout_s):
            return await _instream(address, data)
    except TimeoutError:
        raise ClamdError(f"clamd did not answer within {timeout_s:g}s") from None
    except asyncio.LimitOverrunError:
        raise ClamdError("clamd: reply too long") from None
    except (OSError, asyncio.IncompleteReadError) as exc:
        raise ClamdError(f"clamd unreachable at {address}: {exc}") from None


async def _instream(address: str, data: bytes) -> str | None:
    reader, writer = await _connect(address)
    reply = asyncio.ensure_future(reader.readuntil(b"\0"))
    try:
        try:
            writer.write(b"zINSTREAM\0")
            view = memoryview(data)
            for start in range(0, len(view), CHUNK_BYTES):
                if reply.done():  # clamd answered before the end: it refused the stream
                    break
                piece = view[start:start + CHUNK_BYTES]
                writer.writelines((struct.pack("!L", len(piece)), piece))
                await writer.drain()
            else:
                writer.write(struct.pack("!L", 0))
                await writer.drain()
        except OSError:
            # clamd closed the connection while we wrote: its reply, when it
            # sent one, says why (the size limit); otherwise the error stands.
            if not reply.done() or reply.exception() is not None:
                raise
        return parse_reply(await reply)
    finally:
        reply.cancel()
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
