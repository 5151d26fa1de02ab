"""Redis store: shared state for several MX hosts (standalone, Sentinel, Cluster).

URLs:
  redis://[:password@]host:port/db, rediss://..., unix:///path/to/redis.sock
  redis+sentinel://[:password@]host:port,host:port/SERVICE[/db]
  redis+cluster://[:password@]host:port,host:port

Every decision that reads and writes is one Lua script, so it is atomic and
costs one round trip; the keys one script touches share a hash tag
(``sp:{tag}:...``), which is what Redis Cluster needs to run it. Scripts run
by EVALSHA, loaded on first NOSCRIPT. Every key gets a TTL.

When Redis is unreachable or slow, an operation fails after at most
``store.timeout_s``; then the store backs off (``backoff_s`` doubling up to
``backoff_max_s``) and fails at once until the next try, so callers answer
their default action without waiting. The outage is logged at most once per
``error_log_interval_s``, and its end once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError

from smtpproxy.common.config import StoreConfig
from smtpproxy.common.store.base import (
    GreylistParams,
    GreylistResult,
    RateResult,
    Store,
    StoreError,
)
from smtpproxy.common.store.resp import FastRedis

logger = logging.getLogger(__name__)

# KEYS: triplet, client.  ARGV: now, delay, window, pass_ttl, awl_n, awl_interval, awl_ttl.
# Mirrors SQLiteStore.greylist; times are the caller's clock so hosts agree.
GREYLIST_LUA = """
local now = tonumber(ARGV[1])
local delay, window, pass_ttl = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local awl_n, awl_int, awl_ttl = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local function ttl(s) return math.max(1, math.ceil(s)) end
local c = redis.call('HMGET', KEYS[2], 'count', 'last', 'seen')
local count, last, seen = tonumber(c[1]), tonumber(c[2]), tonumber(c[3])
if count and (not seen or now - seen > awl_ttl) then count = nil end
if awl_n > 0 and count and count >= awl_n then
  redis.call('HSET', KEYS[2], 'seen', ARGV[1])
  redis.call('EXPIRE', KEYS[2], ttl(awl_ttl))
  return {'awl', '0'}
end
local t = redis.call('HMGET', KEYS[1], 'first', 'seen', 'passed')
local first, tseen, passed = tonumber(t[1]), tonumber(t[2]), t[3]
if first then
  if passed == '1' then
    if not tseen or now - tseen > pass_ttl then first = nil end
  elseif now - first > delay + window then first = nil end
end
if not first then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'first', ARGV[1], 'seen', ARGV[1], 'passed', '0')
  redis.call('EXPIRE', KEYS[1], ttl(delay + window))
  return {'new', ARGV[2]}
end
local state, num
if passed ~= '1' then
  local waited = now - first
  if waited < delay then return {'early', string.format('%.6f', delay - waited)} end
  state, num = 'passed', string.format('%.6f', waited)
else
  state, num = 'known', '0'
end
redis.call('HSET', KEYS[1], 'seen', ARGV[1], 'passed', '1')
redis.call('EXPIRE', KEYS[1], ttl(pass_ttl))
if awl_n > 0 then
  if not count then
    redis.call('DEL', KEYS[2])
    redis.call('HSET', KEYS[2], 'count', '1', 'last', ARGV[1], 'seen', ARGV[1])
  elseif now - last >= awl_int then
    redis.call('HSET', KEYS[2], 'count', tostring(count + 1), 'last', ARGV[1], 'seen', ARGV[1])
  else
    redis.call('HSET', KEYS[2], 'seen', ARGV[1])
  end
  redis.call('EXPIRE', KEYS[2], ttl(awl_ttl))
end
return {state, num}
"""

# KEYS: bucket.  ARGV: now, cost, n, then n triples (field, count, period_s).
# GCRA over all limits; nothing is written unless every limit allows.
RATE_LUA = """
local now, cost, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local worst, worst_i, horizon = 0, -1, 1
local news = {}
for i = 0, n - 1 do
  local count, period = tonumber(ARGV[5 + 3 * i]), tonumber(ARGV[6 + 3 * i])
  local tat = tonumber(redis.call('HGET', KEYS[1], ARGV[4 + 3 * i])) or 0
  if tat < now then tat = now end
  local new = tat + cost * period / count
  if new - now > period + 1e-6 then
    local wait = new - period - now
    if wait > worst then worst, worst_i = wait, i end
  end
  news[i + 1] = new
  if new - now > horizon then horizon = new - now end
end
if worst_i >= 0 then return {0, string.format('%.6f', worst), worst_i} end
local args = {}
for i = 0, n - 1 do
  args[#args + 1] = ARGV[4 + 3 * i]
  args[#args + 1] = string.format('%.6f', news[i + 1])
end
redis.call('HSET', KEYS[1], unpack(args))
redis.call('EXPIRE', KEYS[1], math.ceil(horizon))
return {1, '0', -1}
"""

INCR_LUA = """
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return v
"""


HSET_LUA = """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""


class _Script:
    def __init__(self, source: str):
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, client: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            # EVAL runs it and caches it on that server for the next EVALSHA.
            return await client.eval(self.source, len(keys), *keys, *args)


def _hostports(netloc: str, default_port: int) -> list[tuple[str, int]]:
    """'h1:1,[::1]:2,h3' -> [(h1, 1), (::1, 2), (h3, default_port)]."""
    out = []
    for item in netloc.split(","):
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port = rest[1:]
        else:
            host, sep, port = item.rpartition(":")
            if not sep:
                host, port = item, ""
        out.append((host, int(port) if port else default_port))
    return out


def _ttl_s(ttl_s: float) -> int:
    return max(1, int(-(-ttl_s // 1)))


class RedisStore(Store):
    reconnects = True

    def __init__(self, cfg: StoreConfig, url: str):
        super().__init__(cfg)
        self.url = url
        self.client: Any = None
        self._backoff = 0.0
        self._down_until = 0.0
        self._last_log = -1e9
        self._greylist = _Script(GREYLIST_LUA)
        self._rate = _Script(RATE_LUA)
        self._incr = _Script(INCR_LUA)
        self._hset = _Script(HSET_LUA)

    def _common(self) -> dict[str, Any]:
        return {
            "socket_timeout": self.cfg.timeout_s,
            "socket_connect_timeout": self.cfg.timeout_s,
        }

    def _make_client(self) -> Any:
        parts = urlsplit(self.url)
        scheme = parts.scheme
        password = unquote(parts.password) if parts.password else None
        username = unquote(parts.username) if parts.username else None
        netloc = parts.netloc.rpartition("@")[2]
        if scheme == "redis+cluster":
            nodes = [ClusterNode(h, p) for h, p in _hostports(netloc, 6379)]
            return RedisCluster(
                # The cluster client fails rather than waits beyond its pool
                # size; concurrency is bounded by our callers instead.
                startup_nodes=nodes, password=password, username=username, **self._common(),
            )
        if scheme == "redis+sentinel":
            path = [p for p in parts.path.split("/") if p]
            if not path:
                raise StoreError("redis+sentinel URL needs /SERVICE")
            db = int(path[1]) if len(path) > 1 else 0
            sentinel = Sentinel(_hostports(netloc, 26379), **self._common())
            return sentinel.master_for(
                path[0], password=password, username=username, db=db,
                retry=Retry(NoBackoff(), 0), **self._common(),
            )
        if scheme in ("redis", "unix"):
            # Plain standalone Redis: our pipelining client (resp.py), a
            # fraction of redis-py's cost per command.
            return FastRedis(self.url, connect_timeout_s=self.cfg.timeout_s)
        # rediss://: redis-py with a blocking pool (a burst beyond
        # max_connections waits for a connection within timeout_s).
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url, max_connections=self.cfg.redis_max_connections, timeout=self.cfg.timeout_s,
            retry=Retry(NoBackoff(), 0), **self._common(),
        )
        return aioredis.Redis(connection_pool=pool)

    # ------------------------------------------------------------ plumbing

    async def _call(self, make: Callable[[], Awaitable[Any]]) -> Any:
        now = time.monotonic()
        if now < self._down_until:
            raise StoreError("redis unreachable (backing off)")
        try:
            if self.client is None:
                self.client = self._make_client()
            async with asyncio.timeout(self.cfg.timeout_s):
                result = await make()
        except ResponseError as exc:
            # A script or data error: a bug or a foreign key, not an outage.
            self._log(f"redis error: {exc}")
            raise StoreError(f"redis: {exc}") from exc
        except (RedisError, OSError, TimeoutError) as exc:
            reset = getattr(self.client, "reset", None)
            if reset is not None and isinstance(exc, TimeoutError):
                reset()  # a late reply must never answer a later command
            self._backoff = min(self._backoff * 2, self.cfg.backoff_max_s) or self.cfg.backoff_s
            self._down_until = time.monotonic() + self._backoff
            self._log(
                f"redis unreachable ({type(exc).__name__}: {exc}); "
                f"answering defaults, next try in {self._backoff:g}s"
            )
            raise StoreError(f"redis unreachable: {exc}") from exc
        if self._backoff:
            self._backoff = 0.0
            logger.warning("redis reachable again")
        return result

    def _log(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_log >= self.cfg.error_log_interval_s:
            self._last_log = now
            logger.error("%s", message)

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        # Connect eagerly so a wrong URL shows at start; an unreachable Redis
        # is reported but not fatal: operations retry with backoff.
        self.client = self._make_client()
        await self._call(lambda: self.client.ping())

    async def close(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            try:
                await client.aclose()
            except (RedisError, OSError) as exc:
                logger.debug("closing redis: %s", exc)

    # ------------------------------------------------------------ generic values

    async def get(self, key: str) -> bytes | None:
        return await self._call(lambda: self.client.get(key))

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        await self._call(lambda: self.client.set(key, value, px=max(1, int(ttl_s * 1000))))

    async def incr(self, key: str, amount: int, ttl_s: float) -> int:
        return int(await self._call(lambda: self._incr(self.client, [key], [amount, _ttl_s(ttl_s)])))

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        if not keys:
            return []
        if isinstance(self.client, RedisCluster):
            # Keys in many slots: redis-py splits the call per node.
            return await self._call(lambda: self.client.mget_nonatomic(keys))
        return await self._call(lambda: self.client.mget(keys))

    async def incr_many(self, amounts: dict[str, int], ttl_s: float) -> list[int]:
        ttl = _ttl_s(ttl_s)

        async def run() -> list[int]:
            client = self.client
            if isinstance(client, FastRedis):
                # Concurrent script calls leave in one write: one round trip.
                return list(await asyncio.gather(*(
                    self._incr(client, [key], [amount, ttl]) for key, amount in amounts.items()
                )))
            # redis-py (Sentinel, Cluster) would take a pooled connection per
            # concurrent call, more than the pool has for a Bayes batch: one
            # pipeline instead (per node on a Cluster). INCRBY is atomic on
            # its own; the EXPIRE follows it in the same pipeline.
            pipe = client.pipeline(transaction=False)
            for key, amount in amounts.items():
                pipe.incrby(key, amount)
                pipe.expire(key, ttl)
            return (await pipe.execute())[0::2]

        return [int(v) for v in await self._call(run)]

    async def delete(self, key: str) -> bool:
        return bool(await self._call(lambda: self.client.delete(key)))

    async def ttl(self, key: str) -> float | None:
        ms = await self._call(lambda: self.client.pttl(key))
        return None if ms < 0 else ms / 1000.0

    async def scan(self, pattern: str, count: int = 1000) -> AsyncIterator[str]:  # type: ignore[override]
        async def collect() -> list[str]:
            keys: list[str] = []
            async for key in self.client.scan_iter(match=pattern, count=500):
                keys.append(key.decode() if isinstance(key, bytes) else key)
                if len(keys) >= count:
                    break
            return keys

        # A scan is an admin action: allow it more time than one decision.
        now = time.monotonic()
        if now < self._down_until:
            raise StoreError("redis unreachable (backing off)")
        if self.client is None:
            self.client = self._make_client()
        try:
            keys = await asyncio.wait_for(collect(), self.cfg.timeout_s * 30)
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreError(f"redis scan: {exc}") from exc
        for key in keys:
            yield key

    async def hgetall(self, key: str) -> dict[str, str]:
        raw = await self._call(lambda: self.client.hgetall(key))
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def hset(self, key: str, fields: dict[str, float | int | str], ttl_s: float) -> None:
        args: list = [_ttl_s(ttl_s)]
        for k, v in fields.items():
            args += [k, repr(v) if isinstance(v, float) else v]
        await self._call(lambda: self._hset(self.client, [key], args))

    # ------------------------------------------------------------ decisions

    async def greylist(
        self, triplet_key: str, client_key: str, now: float, p: GreylistParams
    ) -> GreylistResult:
        args = [repr(now), repr(p.delay_s), repr(p.retry_window_s), repr(p.pass_ttl_s),
                p.awl_deliveries, repr(p.awl_count_interval_s), repr(p.awl_ttl_s)]
        state, number = await self._call(
            lambda: self._greylist(self.client, [triplet_key, client_key], args)
        )
        state = state.decode()
        value = float(number)
        if state in ("new", "early"):
            return GreylistResult(state, wait_s=value)
        return GreylistResult(state, delayed_s=value)

    async def rate_limit(
        self, key: str, limits: tuple[tuple[int, float], ...], cost: int, now: float
    ) -> RateResult:
        args: list[Any] = [repr(now), cost, len(limits)]
        for count, period in limits:
            args += [f"{count}/{period:g}", count, repr(period)]
        allowed, wait, index = await self._call(lambda: self._rate(self.client, [key], args))
        if allowed:
            return RateResult(True)
        return RateResult(False, float(wait), int(index))
