"""Synchronous mail libraries in worker threads, their DNS answered on the event loop.

pyspf (SPF) and dkimpy (DKIM, ARC) are synchronous and do their own DNS.
Each runs in a small thread pool; every lookup it makes is handed back to
the event loop (``asyncio.run_coroutine_threadsafe``) and answered by the
project's one async ``Resolver``, under the resolver's timeout. So there is
one resolver and one cache for every check, and the event loop never blocks.

``LoopBridge`` is that hand-back for one evaluation. When the check is
cancelled (its timeout), ``abort()`` makes the pending and every later lookup
fail at once with ``LookupAbandoned``, so the worker thread is free again
within one lookup. Pools are shared per kind and size, not per check
instance: a configuration reload builds new checks, and a pool per instance
would leave idle threads behind.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from smtpproxy.common.dns import Resolver

T = TypeVar("T")

# Slack on top of the resolver's own timeout for the hop back to the loop.
LOOKUP_MARGIN_S = 1.0


class LookupAbandoned(Exception):
    """The lookup was given up: the check timed out or was cancelled."""


class LoopBridge:
    """Lookups from one worker-thread evaluation, answered by the loop's Resolver."""

    def __init__(self, resolver: Resolver, loop: asyncio.AbstractEventLoop):
        self.resolver = resolver
        self.loop = loop
        self.aborted = False
        self._pending: concurrent.futures.Future | None = None
        self._lock = threading.Lock()

    def abort(self) -> None:
        with self._lock:
            self.aborted = True
            if self._pending is not None:
                self._pending.cancel()

    def call(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run the coroutine ``make()`` on the loop and wait for it (worker thread only).

        Raises what the coroutine raises (DnsTempError), or LookupAbandoned.
        """
        with self._lock:
            if self.aborted:
                raise LookupAbandoned("the check timed out")
            future = asyncio.run_coroutine_threadsafe(make(), self.loop)
            self._pending = future
        try:
            return future.result(self.resolver.timeout_s + LOOKUP_MARGIN_S)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            future.cancel()
            raise LookupAbandoned("no answer in time") from None
        finally:
            with self._lock:
                self._pending = None


async def run_in_pool(pool: concurrent.futures.Executor, bridge: LoopBridge,
                      func: Callable[..., Any], *args: Any) -> Any:
    """``func(bridge, *args)`` in ``pool``; cancelling the caller frees the thread promptly."""
    try:
        return await asyncio.get_running_loop().run_in_executor(pool, func, bridge, *args)
    except asyncio.CancelledError:
        bridge.abort()
        raise


_pools: dict[tuple[str, int], concurrent.futures.ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def shared_pool(kind: str, size: int) -> concurrent.futures.ThreadPoolExecutor:
    with _pools_lock:
        pool = _pools.get((kind, size))
        if pool is None:
            pool = _pools[(kind, size)] = concurrent.futures.ThreadPoolExecutor(
                size, thread_name_prefix=f"{kind}{size}")
        return pool
