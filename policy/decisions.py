"""Recording decisions for the proxy's history, off the answer's path.

``DecisionWriter.record`` is called by the engine once per request that got
more than a plain DUNNO (smtpproxy/common/decisions.py has the key and the
record). It only appends to a bounded queue; a task writes what gathered
with one ``set_many`` per ``FLUSH_INTERVAL_S``. A full queue drops the
record, a store in trouble loses the batch: counted
(``smtpproxy_policy_decisions_lost_total``), logged at DEBUG, the answer
already given. The writer belongs to the service, so a reload keeps it
(``configure`` swaps the store and the TTL).
"""

from __future__ import annotations

import asyncio
import logging

from smtpproxy.common.decisions import decision_key, encode
from smtpproxy.common.store import Store

logger = logging.getLogger("policy.decisions")

FLUSH_INTERVAL_S = 0.05
QUEUE_MAX = 10_000


class DecisionWriter:
    def __init__(self, lost=None):
        self.store: Store | None = None
        self.ttl_s = 0.0
        self.lost = lost  # a Counter with a "reason" label, or None
        self._pending: dict[str, bytes] = {}
        self._task: asyncio.Task | None = None

    def configure(self, store: Store | None, ttl_s: float) -> None:
        self.store, self.ttl_s = store, ttl_s

    def _count(self, reason: str, n: int = 1) -> None:
        if self.lost is not None:
            self.lost.inc(reason, amount=n)

    def record(self, req: dict[str, str], record: dict) -> None:
        """Queue ``record`` for the request's triplet; never blocks, never raises."""
        if self.store is None or self.ttl_s <= 0:
            return
        try:
            key = decision_key(self.store, req.get("client_address", ""),
                               req.get("sender", ""), req.get("recipient", ""))
            if len(self._pending) >= QUEUE_MAX and key not in self._pending:
                self._count("queue_full")
                return
            self._pending[key] = encode(record)  # a newer decision replaces an older one
            if self._task is None:
                self._task = asyncio.get_running_loop().create_task(self._flush())
        except Exception as exc:
            self._count("error")
            logger.debug("decision not recorded: %s", exc)

    async def _flush(self) -> None:
        try:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            while self._pending:
                batch, self._pending = self._pending, {}
                store, ttl = self.store, self.ttl_s
                if store is None or ttl <= 0:
                    return
                try:
                    await store.set_many(batch, ttl)
                except Exception as exc:
                    self._count("store", len(batch))
                    logger.debug("%d decisions not recorded: %s", len(batch), exc)
        finally:
            self._task = None

    async def close(self) -> None:
        """Write what is pending (bounded by the store's own timeout), then stop."""
        task = self._task
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), 5.0)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
