"""The store interface every backend implements; its contract is in the package docstring (__init__.py).

Kept apart from ``open_store`` so the backends import the interface, and the
package imports the backends, without either importing the other.
"""

from __future__ import annotations

import abc
import asyncio
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

    async def set_many(self, values: dict[str, bytes], ttl_s: float) -> None:
        """``set`` for many keys, each with ``ttl_s`` (history rows): by default
        concurrent sets; a backend may do them in one call (SQLite: one
        transaction on its thread)."""
        await asyncio.gather(*(self.set(key, value, ttl_s) for key, value in values.items()))

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
