"""A small pipelining RESP2 client for standalone Redis (redis://, unix://).

Why not redis-py's asyncio client for the hot path: it takes a pooled
connection per command and reads through StreamReader with a timeout task,
which costs more per decision than the decision itself. Here all callers
share one connection: commands written in the same event-loop iteration go
out in one write, replies come back in order and resolve their futures, and
Redis answers a pipeline as cheaply as it can. Timeouts belong to the caller
(RedisStore), which calls ``reset()`` after one so a hung server's late
replies can never be matched to new commands.

It speaks the subset of the redis-py API the store uses, raising redis-py's
exception classes, so RedisStore treats both clients alike. TLS, Sentinel and
Cluster stay with redis-py.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError


class _Incomplete(Exception):
    pass


def _parse(buf: bytes, pos: int) -> tuple[Any, int]:
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind = buf[pos]
    line = buf[pos + 1:end]
    pos = end + 2
    if kind == 36:  # $ bulk string
        n = int(line)
        if n < 0:
            return None, pos
        if len(buf) < pos + n + 2:
            raise _Incomplete
        return buf[pos:pos + n], pos + n + 2
    if kind == 58:  # : integer
        return int(line), pos
    if kind == 42:  # * array
        n = int(line)
        if n < 0:
            return None, pos
        items = []
        for _ in range(n):
            item, pos = _parse(buf, pos)
            items.append(item)
        return items, pos
    if kind == 43:  # + simple string
        return line, pos
    if kind == 45:  # - error
        text = line.decode("utf-8", "replace")
        return (NoScriptError(text) if text.startswith("NOSCRIPT") else ResponseError(text)), pos
    raise RedisConnectionError(f"protocol error: unexpected reply type {chr(kind)!r}")


def _encode(args: tuple) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        kind = type(arg)
        if kind is not bytes:
            arg = arg.encode() if kind is str else str(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return b"".join(parts)


class _Protocol(asyncio.Protocol):
    def __init__(self, client: FastRedis):
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.waiters: collections.deque[asyncio.Future] = collections.deque()
        self.buf = b""
        # Commands issued in this event-loop iteration, written together.
        self.wbuf: list[bytes] = []
        self.flush_scheduled = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos = 0
        waiters = self.waiters
        try:
            while waiters and pos < len(buf):
                try:
                    value, pos = _parse(buf, pos)
                except _Incomplete:
                    break
                fut = waiters.popleft()
                if not fut.done():  # a caller that timed out no longer waits
                    if isinstance(value, Exception):
                        fut.set_exception(value)
                    else:
                        fut.set_result(value)
        except (ValueError, RedisConnectionError) as exc:
            self.fail(RedisConnectionError(f"bad reply from redis: {exc}"))
            if self.transport is not None:
                self.transport.close()
            return
        self.buf = buf[pos:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"connection to redis lost: {exc or 'closed'}"))
        if self.client._proto is self:
            self.client._proto = None

    def flush(self) -> None:
        self.flush_scheduled = False
        data, self.wbuf = b"".join(self.wbuf), []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
        else:
            self.fail(RedisConnectionError("connection to redis closed"))

    def fail(self, exc: Exception) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(exc)


class FastRedis:
    """One pipelined connection; a redis-py-like subset of commands."""

    def __init__(self, url: str, connect_timeout_s: float = 1.0):
        parts = urlsplit(url)
        self.unix_path: str | None = None
        query = parse_qs(parts.query)
        if parts.scheme == "unix":
            self.unix_path = parts.path
            self.db = int(query.get("db", ["0"])[0])
        else:
            self.host = parts.hostname or "127.0.0.1"
            self.port = parts.port or 6379
            path = parts.path.strip("/")
            self.db = int(path) if path else int(query.get("db", ["0"])[0])
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.connect_timeout_s = connect_timeout_s
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Future | None = None

    # ------------------------------------------------------------ connection

    async def _connection(self) -> _Protocol:
        if self._proto is not None:
            return self._proto
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_future()
            try:
                proto = await self._open()
            except BaseException as exc:
                fut, self._connecting = self._connecting, None
                if isinstance(exc, OSError | TimeoutError):
                    exc = RedisConnectionError(f"cannot connect to redis: {exc}")
                if not fut.done():
                    fut.set_exception(exc)
                    fut.exception()  # retrieved: no "never retrieved" warning
                raise exc from None
            self._proto = proto
            fut, self._connecting = self._connecting, None
            fut.set_result(proto)
            return proto
        return await asyncio.shield(self._connecting)

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout_s):
            if self.unix_path:
                _, proto = await loop.create_unix_connection(lambda: _Protocol(self), self.unix_path)
            else:
                _, proto = await loop.create_connection(lambda: _Protocol(self), self.host, self.port)
            setup = []
            if self.password:
                setup.append(("AUTH", self.username, self.password) if self.username
                             else ("AUTH", self.password))
            if self.db:
                setup.append(("SELECT", self.db))
            for args in setup:
                fut = loop.create_future()
                proto.waiters.append(fut)
                proto.transport.write(_encode(args))
                await fut
        return proto

    def reset(self) -> None:
        """Drop the connection (after a timeout); the next command reconnects."""
        proto, self._proto = self._proto, None
        if proto is not None:
            proto.fail(RedisConnectionError("connection reset after a timeout"))
            if proto.transport is not None:
                proto.transport.close()

    async def execute(self, *args: Any) -> Any:
        proto = await self._connection()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        # The command and its waiter belong to one connection: a reset in
        # between fails both together, never pairs a reply with another command.
        proto.waiters.append(fut)
        proto.wbuf.append(_encode(args))
        if not proto.flush_scheduled:
            proto.flush_scheduled = True
            loop.call_soon(proto.flush)
        return await fut

    # ------------------------------------------------------------ commands

    async def ping(self) -> bool:
        return await self.execute("PING") == b"PONG"

    async def get(self, key: str) -> bytes | None:
        return await self.execute("GET", key)

    async def set(self, key: str, value: bytes, px: int) -> Any:
        return await self.execute("SET", key, value, "PX", px)

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        return await self.execute("MGET", *keys)

    async def delete(self, key: str) -> int:
        return await self.execute("DEL", key)

    async def pttl(self, key: str) -> int:
        return await self.execute("PTTL", key)

    async def hgetall(self, key: str) -> dict[bytes, bytes]:
        flat = await self.execute("HGETALL", key)
        return dict(zip(flat[::2], flat[1::2], strict=True))

    async def evalsha(self, sha: str, numkeys: int, *args: Any) -> Any:
        return await self.execute("EVALSHA", sha, numkeys, *args)

    async def eval(self, script: str, numkeys: int, *args: Any) -> Any:
        return await self.execute("EVAL", script, numkeys, *args)

    async def scan_iter(self, match: str, count: int = 500) -> AsyncIterator[bytes]:
        cursor = b"0"
        while True:
            cursor, keys = await self.execute("SCAN", cursor, "MATCH", match, "COUNT", count)
            for key in keys:
                yield key
            if cursor == b"0":
                return

    async def aclose(self) -> None:
        self.reset()
