"""Shared state for both daemons: one small async interface, two backends.

A Store keeps short-lived facts (greylist triplets, rate-limit buckets, Bayes
tokens, reply Message-IDs) under string keys, each with a time to live, so
nothing grows without bound. Backends:

- ``sqlite.py``: a file on this host, the embedded default; every call runs
  in one dedicated thread; each decision atomic (a savepoint), decisions of
  one event-loop iteration committed together.
- ``redis.py``: standalone, Sentinel or Cluster, for several MX hosts; the
  decisions that read and write (greylist, rate limit) are Lua scripts, one
  round trip each, their keys sharing a hash tag so Cluster accepts them.

The contract every backend keeps (``tests/policy/test_store_contract.py``):

- generic values: ``get``/``set``/``incr``/``delete``/``ttl``, and the batch
  forms ``mget``/``incr_many`` for callers with many keys (Bayes tokens); a
  key past its TTL reads as absent;
- ``greylist()`` and ``rate_limit()`` are atomic: concurrent callers, from
  this process or another host, never both see a fresh bucket;
- time is passed in by the caller (``now``, Unix seconds), so every host and
  every test decides on the same clock;
- a backend in trouble raises StoreError promptly (after at most the
  configured timeout, or at once while it is backing off); callers answer
  their own default and carry on.

Keys are built with ``key(tag, *parts)``: ``tag`` is the Cluster hash tag,
everything one atomic operation touches shares it.
"""

from __future__ import annotations

import abc
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

from smtpproxy.common.config import StoreConfig


class StoreError(Exception):
    """The store could not answer (unreachable, timed out, corrupt)."""


@dataclass(frozen=True)
class GreylistParams:
    delay_s: float
    retry_window_s: float
    pass_ttl_s: float
    # 0 disables the auto-whitelist.
    awl_deliveries: int
    awl_count_interval_s: float
    awl_ttl_s: float


# Greylist outcomes.
GL_NEW = "new"          # first sighting: defer, wait `wait_s`
GL_EARLY = "early"      # retried before the delay was over: defer, wait `wait_s`
GL_PASSED = "passed"    # retried in time: accept, `delayed_s` since first sighting
GL_KNOWN = "known"      # passed before, refreshed
GL_AWL = "awl"          # client network auto-whitelisted


@dataclass(frozen=True)
class GreylistResult:
    state: str
    # Seconds the client still has to wait (GL_NEW, GL_EARLY).
    wait_s: float = 0.0
    # Seconds between the first attempt and the accepted retry (GL_PASSED).
    delayed_s: float = 0.0


@dataclass(frozen=True)
class RateResult:
    allowed: bool
    # When refused: seconds until the request would be allowed.
    retry_after_s: float = 0.0
    # Index of the limit that refused (in the order given).
    limit_index: int = -1


class Store(abc.ABC):
    """The interface. Keys are str, values bytes (callers encode)."""

    # True when a failed open() heals by itself (a network store reconnects on
    # the next operation); False when it means a misconfiguration (a file
    # that cannot be created), which a daemon should refuse to start with.
    reconnects = False

    def __init__(self, cfg: StoreConfig):
        self.cfg = cfg
        self.prefix = cfg.key_prefix

    def key(self, tag: str, *parts: str) -> str:
        """A full key whose Cluster hash slot is decided by ``tag`` alone."""
        return f"{self.prefix}{{{tag}}}" + "".join(":" + p for p in parts)

    # -- lifecycle
    @abc.abstractmethod
    async def open(self) -> None:
        """Connect / create tables. May raise StoreError (a Redis that is down
        at start is not fatal for the caller: operations retry with backoff)."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    # -- generic values
    @abc.abstractmethod
    async def get(self, key: str) -> bytes | None: ...

    @abc.abstractmethod
    async def set(self, key: str, value: bytes, ttl_s: float) -> None: ...

    @abc.abstractmethod
    async def incr(self, key: str, amount: int, ttl_s: float) -> int:
        """Add ``amount`` (creating 0) and set the TTL; returns the new value."""

    @abc.abstractmethod
    async def mget(self, keys: list[str]) -> list[bytes | None]:
        """Many values in one call (Bayes token lookups); None where absent."""

    @abc.abstractmethod
    async def incr_many(self, amounts: dict[str, int], ttl_s: float) -> list[int]:
        """``incr`` for many keys in one call (one round trip on standalone
        Redis, one transaction on SQLite); each key is atomic on its own."""

    @abc.abstractmethod
    async def delete(self, key: str) -> bool:
        """True when the key existed."""

    @abc.abstractmethod
    async def ttl(self, key: str) -> float | None:
        """Seconds left, None when absent."""

    @abc.abstractmethod
    def scan(self, pattern: str, count: int = 1000) -> AsyncIterator[str]:
        """Keys matching a glob pattern (``*`` only), at most ``count``; for admin use."""

    @abc.abstractmethod
    async def hgetall(self, key: str) -> dict[str, str]:
        """Fields of a structured entry (greylist triplet, bucket); {} when absent."""

    @abc.abstractmethod
    async def hset(self, key: str, fields: dict[str, float | int | str], ttl_s: float) -> None:
        """Replace a structured entry whole and set its TTL (admin writes)."""

    # -- atomic decisions
    @abc.abstractmethod
    async def greylist(
        self, triplet_key: str, client_key: str, now: float, p: GreylistParams
    ) -> GreylistResult:
        """One greylist decision; ``triplet_key`` and ``client_key`` share a tag.

        client entry (auto-whitelist): count of deliveries, last counted time.
        triplet entry: first seen, passed flag. See policy/greylist.py.
        """

    @abc.abstractmethod
    async def rate_limit(
        self, key: str, limits: tuple[tuple[int, float], ...], cost: int, now: float
    ) -> RateResult:
        """GCRA over every (count, period_s) limit at once; nothing is
        consumed unless all of them allow ``cost``. See policy/ratelimit.py."""


def gcra(
    tats: list[float], limits: tuple[tuple[int, float], ...], cost: int, now: float
) -> tuple[RateResult, list[float]]:
    """The reference GCRA used by the SQLite backend (the Lua script mirrors it).

    For a limit of ``count`` per ``period``: emission interval T = period/count;
    the theoretical arrival time TAT advances by cost*T per request; a request
    is allowed when the new TAT is at most ``period`` ahead of now. So an idle
    bucket admits ``count`` at once and then one every T.
    """
    new_tats = []
    worst, worst_index = 0.0, -1
    for i, (count, period) in enumerate(limits):
        interval = period / count
        tat = max(tats[i] if i < len(tats) else 0.0, now)
        new_tat = tat + cost * interval
        if new_tat - now > period + 1e-6:
            wait = new_tat - period - now
            if wait > worst:
                worst, worst_index = wait, i
        new_tats.append(new_tat)
    if worst_index >= 0:
        return RateResult(False, worst, worst_index), tats
    return RateResult(True), new_tats


def open_store(cfg: StoreConfig, state_dir: str) -> Store:
    """The backend for ``cfg.url`` (not yet opened); empty url: SQLite in state_dir."""
    url = cfg.url or "sqlite://" + os.path.abspath(os.path.join(state_dir, "smtpproxy.db"))
    if url.startswith("sqlite://"):
        from smtpproxy.common.store.sqlite import SQLiteStore

        # sqlite:///var/lib/x.db -> /var/lib/x.db; sqlite://relative.db -> relative.db
        path = url[len("sqlite://"):]
        return SQLiteStore(cfg, path)
    from smtpproxy.common.store.redis import RedisStore

    return RedisStore(cfg, url)


__all__ = [
    "GL_AWL", "GL_EARLY", "GL_KNOWN", "GL_NEW", "GL_PASSED", "GreylistParams", "GreylistResult",
    "RateResult", "Store", "StoreError", "gcra", "open_store",
]
