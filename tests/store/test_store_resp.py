"""The pipelining RESP2 client's codec: labelled tables, fed whole and one byte at a time."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from smtpproxy.common.store.resp import FastRedis, _encode, _Incomplete, _parse, _Protocol

REPLIES = [
    ("simple_string", b"+OK\r\n", b"OK"),
    ("integer", b":42\r\n", 42),
    ("negative_integer", b":-2\r\n", -2),
    ("bulk", b"$5\r\nhello\r\n", b"hello"),
    ("bulk_with_crlf_inside", b"$4\r\na\r\nb\r\n", b"a\r\nb"),
    ("null_bulk", b"$-1\r\n", None),
    ("empty_bulk", b"$0\r\n\r\n", b""),
    ("array_nested", b"*2\r\n$3\r\nnew\r\n*1\r\n:1\r\n", [b"new", [1]]),
    ("null_array", b"*-1\r\n", None),
]


@pytest.mark.parametrize("label,wire,expected", REPLIES, ids=[r[0] for r in REPLIES])
def test_parse_whole(label, wire, expected):
    assert _parse(wire, 0) == (expected, len(wire))


@pytest.mark.parametrize("label,wire,expected", REPLIES, ids=[r[0] for r in REPLIES])
def test_parse_every_prefix_is_incomplete(label, wire, expected):
    for cut in range(len(wire)):
        with pytest.raises(_Incomplete):
            _parse(wire[:cut], 0)


def test_error_replies_become_redis_exceptions():
    value, _ = _parse(b"-NOSCRIPT No matching script\r\n", 0)
    assert isinstance(value, NoScriptError)
    value, _ = _parse(b"-ERR wrong type\r\n", 0)
    assert isinstance(value, ResponseError) and not isinstance(value, NoScriptError)


def test_encode_command():
    assert _encode(("SET", "k", b"\x00v", 5)) == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n\x00v\r\n$1\r\n5\r\n"


class _FakeTransport:
    def __init__(self):
        self.closed = False

    def close(self):
        self.closed = True


@pytest.mark.parametrize("feeding", ["whole", "one_byte"])
def test_pipelined_replies_resolve_in_order(feeding):
    async def go():
        loop = asyncio.get_running_loop()
        proto = _Protocol(FastRedis("redis://127.0.0.1:1/0"))
        proto.connection_made(_FakeTransport())
        futs = [loop.create_future() for _ in range(4)]
        proto.waiters.extend(futs)
        futs[1].cancel()  # a caller that timed out: its reply is skipped, not shifted
        wire = b"+OK\r\n:7\r\n-ERR no\r\n*2\r\n$1\r\na\r\n$-1\r\n"
        chunks = [wire] if feeding == "whole" else [wire[i:i + 1] for i in range(len(wire))]
        for chunk in chunks:
            proto.data_received(chunk)
        assert futs[0].result() == b"OK"
        assert isinstance(futs[2].exception(), ResponseError)
        assert futs[3].result() == [b"a", None]

    asyncio.run(go())


def test_connection_lost_fails_waiters():
    async def go():
        loop = asyncio.get_running_loop()
        proto = _Protocol(FastRedis("redis://127.0.0.1:1/0"))
        proto.connection_made(_FakeTransport())
        fut = loop.create_future()
        proto.waiters.append(fut)
        proto.connection_lost(None)
        assert isinstance(fut.exception(), RedisConnectionError)

    asyncio.run(go())


def test_garbage_from_server_closes_connection():
    async def go():
        loop = asyncio.get_running_loop()
        proto = _Protocol(FastRedis("redis://127.0.0.1:1/0"))
        transport = _FakeTransport()
        proto.connection_made(transport)
        fut = loop.create_future()
        proto.waiters.append(fut)
        proto.data_received(b"?what\r\n")
        assert isinstance(fut.exception(), RedisConnectionError) and transport.closed

    asyncio.run(go())


@pytest.mark.parametrize("url,expected", [
    ("redis://127.0.0.1:6380/3", ("127.0.0.1", 6380, 3, None, None)),
    ("redis://:s%40cret@host/0", ("host", 6379, 0, None, "s@cret")),
    ("redis://user:pw@host:1/2", ("host", 1, 2, "user", "pw")),
])
def test_url_parsing(url, expected):
    c = FastRedis(url)
    assert (c.host, c.port, c.db, c.username, c.password) == expected


def test_unix_url():
    c = FastRedis("unix:///run/redis/redis.sock?db=4")
    assert (c.unix_path, c.db) == ("/run/redis/redis.sock", 4)


@pytest.mark.integration
def test_reset_fails_pending_commands_and_next_command_uses_fresh_connection(redis_server):
    async def go():
        c = FastRedis(redis_server.url)
        assert await c.ping()
        await c.execute("SET", "resp:test", "before")
        pending = asyncio.ensure_future(c.execute("SET", "resp:test", "lost?"))
        await asyncio.sleep(0)
        c.reset()  # what RedisStore does after a timeout
        with pytest.raises(RedisConnectionError):
            await pending
        # The next command reconnects; its reply is its own.
        assert await c.execute("ECHO", "mine") == b"mine"
        results = await asyncio.gather(*(c.execute("ECHO", str(i)) for i in range(200)))
        assert results == [str(i).encode() for i in range(200)]
        await c.aclose()

    asyncio.run(go())
