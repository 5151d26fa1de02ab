"""SQLite store: the embedded default, one file in the state directory.

sqlite3 blocks, so every call runs on one dedicated thread that owns the
connection; the event loop only awaits a future. Calls issued in the same
event-loop iteration go to the thread as one batch, and the batch's
decisions are group-committed: one ``BEGIN IMMEDIATE`` transaction, each
decision in its own SAVEPOINT. So every read-modify-write is atomic, also
against other processes sharing the file (they wait up to
``sqlite_busy_timeout_s`` for the write lock), and a commit is paid once per
batch rather than once per decision.

WAL with ``synchronous=NORMAL``: a commit does not wait for fsync, only
checkpoints do. A power cut may lose the last moments of greylist state,
which costs one extra deferral, never a lost message.

One table: key, value (bytes, or JSON for structured entries), absolute
expiry time. Expired rows read as absent and are purged in the background.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fnmatch
import json
import logging
import math
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from smtpproxy.common.config import StoreConfig
from smtpproxy.common.store.base import (
    GL_AWL,
    GL_EARLY,
    GL_KNOWN,
    GL_NEW,
    GL_PASSED,
    GreylistParams,
    GreylistResult,
    RateResult,
    Store,
    StoreError,
    gcra,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

# No index on exp: every write moves a row's expiry, and keeping an index of
# it in step doubled the cost of each write (Bayes learning writes hundreds
# of thousands of rows). The purge walks the keys in chunks instead.
SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    k   TEXT PRIMARY KEY,
    v   BLOB NOT NULL,
    exp REAL NOT NULL
) WITHOUT ROWID;
DROP INDEX IF EXISTS kv_exp;
"""

# Rows examined per purge transaction: the write lock is held for about a
# millisecond at a time, so decisions are not held up behind a purge.
PURGE_CHUNK = 2000
# Keys per query when reading many (well under SQLite's 32766 parameters).
MGET_CHUNK = 500


class SQLiteStore(Store):
    def __init__(self, cfg: StoreConfig, path: str):
        super().__init__(cfg)
        self.path = path
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None
        self._purger: asyncio.Task | None = None
        self._batch: list = []

    # ------------------------------------------------------------ plumbing

    def _connect(self) -> None:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        db = sqlite3.connect(
            self.path, timeout=self.cfg.sqlite_busy_timeout_s, isolation_level=None,
            check_same_thread=False,
        )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)
        self._db = db

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(*args) on the store thread (reads, set-up)."""
        return await self._submit(fn, args, False)

    async def _run_tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run fn(db) on the store thread as one atomic unit (see _run_batch)."""
        return await self._submit(fn, (), True)

    async def _submit(self, fn: Callable, args: tuple, tx: bool) -> Any:
        if self._executor is None:
            raise StoreError("store is not open")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        self._batch.append((fn, args, tx, fut))
        if len(self._batch) == 1:
            loop.call_soon(self._dispatch, loop)
        try:
            async with asyncio.timeout(self.cfg.timeout_s):
                return await fut
        except TimeoutError:
            raise StoreError(f"sqlite {self.path}: timed out") from None
        except StoreError:
            raise
        except (sqlite3.Error, ValueError, KeyError, TypeError) as exc:
            # Locked or broken file, or an entry that does not parse.
            raise StoreError(f"sqlite {self.path}: {exc!r}") from exc

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._batch = self._batch, []
        if self._executor is None:
            for *_, fut in batch:
                if not fut.done():
                    fut.set_exception(StoreError("store is closed"))
            return
        self._executor.submit(self._run_batch, batch, loop)

    def _run_batch(self, batch: list, loop: asyncio.AbstractEventLoop) -> None:
        """On the store thread: the calls of one event-loop iteration.

        Group commit: the writing calls share one BEGIN IMMEDIATE ... COMMIT,
        each inside its own SAVEPOINT, so each is atomic (an error rolls back
        that call alone) and no other process can interleave (the write lock
        is held throughout); a commit costs more than a decision, so this is
        what lets SQLite keep up under concurrency. A failed BEGIN or COMMIT
        fails every writing call of the batch.
        """
        db = self._db
        results: list[tuple[asyncio.Future, Any, BaseException | None]] = []
        written: list[int] = []
        in_tx = False
        tx_error: BaseException | None = None
        for fn, args, tx, fut in batch:
            if fut.cancelled():  # its caller timed out: do not run it late
                continue
            if not tx:
                try:
                    results.append((fut, fn(*args), None))
                except Exception as exc:
                    results.append((fut, None, exc))
                continue
            if tx_error is not None:
                results.append((fut, None, tx_error))
                continue
            if not in_tx:
                try:
                    db.execute("BEGIN IMMEDIATE")
                except Exception as exc:
                    tx_error = exc
                    results.append((fut, None, exc))
                    continue
                in_tx = True
            db.execute("SAVEPOINT decision")
            try:
                value = fn(db)
            except Exception as exc:
                db.execute("ROLLBACK TO decision")
                db.execute("RELEASE decision")
                results.append((fut, None, exc))
                continue
            db.execute("RELEASE decision")
            written.append(len(results))
            results.append((fut, value, None))
        if in_tx:
            try:
                db.execute("COMMIT")
            except Exception as exc:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                for i in written:
                    results[i] = (results[i][0], None, exc)
        loop.call_soon_threadsafe(self._deliver, results)

    @staticmethod
    def _deliver(results: list) -> None:
        for fut, value, exc in results:
            if fut.done():
                continue
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(value)

    @staticmethod
    def _read(db: sqlite3.Connection, key: str, now: float) -> bytes | None:
        row = db.execute("SELECT v FROM kv WHERE k = ? AND exp > ?", (key, now)).fetchone()
        return None if row is None else row[0]

    @staticmethod
    def _write(db: sqlite3.Connection, key: str, value: bytes, exp: float) -> None:
        db.execute(
            "INSERT INTO kv (k, v, exp) VALUES (?, ?, ?) "
            "ON CONFLICT (k) DO UPDATE SET v = excluded.v, exp = excluded.exp",
            (key, value, exp),
        )

    @classmethod
    def _read_json(cls, db: sqlite3.Connection, key: str, now: float) -> dict | None:
        raw = cls._read(db, key, now)
        return None if raw is None else json.loads(raw)

    @classmethod
    def _write_json(cls, db: sqlite3.Connection, key: str, value: dict, exp: float) -> None:
        cls._write(db, key, json.dumps(value, separators=(",", ":")).encode(), exp)

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sqlite")
        try:
            await self._run(self._connect)
        except (StoreError, OSError) as exc:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        self._purger = asyncio.get_running_loop().create_task(self._purge_loop())

    async def _purge_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.sqlite_purge_interval_s)
            try:
                await self.purge()
            except StoreError as exc:
                logger.warning("purging expired rows failed: %s", exc)

    async def purge(self, now: float | None = None) -> int:
        """Delete expired rows, PURGE_CHUNK keys per transaction; returns how many."""
        when = time.time() if now is None else now

        def run(db: sqlite3.Connection, after: str) -> tuple[int, str | None]:
            # The chunk is (after, last]; None as last: the rest of the table.
            row = db.execute("SELECT k FROM kv WHERE k > ? ORDER BY k LIMIT 1 OFFSET ?",
                             (after, PURGE_CHUNK - 1)).fetchone()
            last = row[0] if row else None
            if last is None:
                cur = db.execute("DELETE FROM kv WHERE k > ? AND exp <= ?", (after, when))
            else:
                cur = db.execute("DELETE FROM kv WHERE k > ? AND k <= ? AND exp <= ?",
                                 (after, last, when))
            return cur.rowcount, last

        purged, after = 0, ""
        while True:
            count, last = await self._run_tx(lambda db, after=after: run(db, after))
            purged += count
            if last is None:
                return purged
            after = last

    async def close(self) -> None:
        if self._purger is not None:
            self._purger.cancel()
            self._purger = None
        if self._executor is None:
            return
        executor, self._executor = self._executor, None

        def shut() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(executor, shut)
        executor.shutdown(wait=True)

    # ------------------------------------------------------------ generic values

    async def get(self, key: str) -> bytes | None:
        now = time.time()
        return await self._run(lambda: self._read(self._db, key, now))  # type: ignore[arg-type]

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        exp = time.time() + ttl_s
        await self._run_tx(lambda db: self._write(db, key, bytes(value), exp))

    async def set_many(self, values: dict[str, bytes], ttl_s: float) -> None:
        exp = time.time() + ttl_s

        def run(db: sqlite3.Connection) -> None:
            for key, value in values.items():
                self._write(db, key, bytes(value), exp)

        await self._run_tx(run)

    async def incr(self, key: str, amount: int, ttl_s: float) -> int:
        now = time.time()

        def run(db: sqlite3.Connection) -> int:
            raw = self._read(db, key, now)
            value = (int(raw) if raw is not None else 0) + amount
            self._write(db, key, str(value).encode(), now + ttl_s)
            return value

        return await self._run_tx(run)

    @staticmethod
    def _read_many(db: sqlite3.Connection, keys: list[str], now: float) -> dict[str, bytes]:
        """The live values of ``keys`` (absent ones left out), 500 keys a query:
        about four times cheaper than a query per key (Bayes asks for
        hundreds or thousands at a time); in key order, as the B-tree is."""
        found: dict[str, bytes] = {}
        ordered = sorted(set(keys))
        for i in range(0, len(ordered), MGET_CHUNK):
            chunk = ordered[i:i + MGET_CHUNK]
            found.update(db.execute(
                f"SELECT k, v FROM kv WHERE k IN ({','.join('?' * len(chunk))}) AND exp > ?",
                (*chunk, now)).fetchall())
        return found

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        now = time.time()

        def run() -> list[bytes | None]:
            assert self._db is not None
            found = self._read_many(self._db, keys, now)
            return [found.get(key) for key in keys]

        return await self._run(run)

    async def incr_many(self, amounts: dict[str, int], ttl_s: float) -> list[int]:
        now = time.time()

        # One upsert per key, all in one executemany (Bayes learns thousands of
        # keys at a time), then the new values read back in chunks: an expired
        # row restarts from 0; values stay decimal text in a BLOB, as incr writes them.
        # In key order: Bayes keys are hashes, and visiting the B-tree in order
        # touches each page once instead of at random.
        sql = (
            "INSERT INTO kv (k, v, exp) VALUES (?1, CAST(CAST(?2 AS TEXT) AS BLOB), ?3) "
            "ON CONFLICT (k) DO UPDATE SET v = CAST(CAST("
            "CASE WHEN exp > ?4 THEN CAST(CAST(v AS TEXT) AS INTEGER) + ?2 ELSE ?2 END"
            " AS TEXT) AS BLOB), exp = ?3"
        )
        keys = list(amounts)

        def run(db: sqlite3.Connection) -> list[int]:
            exp = now + ttl_s
            db.executemany(sql, [(key, amounts[key], exp, now) for key in sorted(keys)])
            values = self._read_many(db, keys, -math.inf)  # as written, even with a TTL of 0
            return [int(values[key]) for key in keys]

        return await self._run_tx(run)

    async def delete(self, key: str) -> bool:
        now = time.time()

        def run(db: sqlite3.Connection) -> bool:
            return db.execute("DELETE FROM kv WHERE k = ? AND exp > ?", (key, now)).rowcount > 0

        return await self._run_tx(run)

    async def ttl(self, key: str) -> float | None:
        now = time.time()

        def run() -> float | None:
            assert self._db is not None
            row = self._db.execute("SELECT exp FROM kv WHERE k = ? AND exp > ?", (key, now)).fetchone()
            return None if row is None else row[0] - now

        return await self._run(run)

    async def scan(self, pattern: str, count: int = 1000) -> AsyncIterator[str]:  # type: ignore[override]
        now = time.time()
        # GLOB speaks the same * as Redis; [ and ? are not used in our keys.
        def run() -> list[str]:
            assert self._db is not None
            rows = self._db.execute(
                "SELECT k FROM kv WHERE k GLOB ? AND exp > ? LIMIT ?", (pattern, now, count)
            ).fetchall()
            return [r[0] for r in rows if fnmatch.fnmatchcase(r[0], pattern)]

        for key in await self._run(run):
            yield key

    async def hgetall(self, key: str) -> dict[str, str]:
        now = time.time()

        def run() -> dict[str, str]:
            assert self._db is not None
            value = self._read_json(self._db, key, now)
            return {k: str(v) for k, v in (value or {}).items()}

        return await self._run(run)

    async def hset(self, key: str, fields: dict[str, float | int | str], ttl_s: float) -> None:
        exp = time.time() + ttl_s
        await self._run_tx(lambda db: self._write_json(db, key, dict(fields), exp))

    # ------------------------------------------------------------ decisions

    async def greylist(
        self, triplet_key: str, client_key: str, now: float, p: GreylistParams
    ) -> GreylistResult:
        def run(db: sqlite3.Connection) -> GreylistResult:
            client = self._read_json(db, client_key, now)
            if client is not None and now - client["seen"] > p.awl_ttl_s:
                client = None
            if p.awl_deliveries and client is not None and client["count"] >= p.awl_deliveries:
                client["seen"] = now
                self._write_json(db, client_key, client, now + p.awl_ttl_s)
                return GreylistResult(GL_AWL)

            entry = self._read_json(db, triplet_key, now)
            if entry is not None:
                if entry["passed"]:
                    if now - entry["seen"] > p.pass_ttl_s:
                        entry = None
                elif now - entry["first"] > p.delay_s + p.retry_window_s:
                    entry = None
            if entry is None:
                entry = {"first": now, "seen": now, "passed": 0}
                self._write_json(db, triplet_key, entry, now + p.delay_s + p.retry_window_s)
                return GreylistResult(GL_NEW, wait_s=p.delay_s)
            if not entry["passed"]:
                waited = now - entry["first"]
                if waited < p.delay_s:
                    return GreylistResult(GL_EARLY, wait_s=p.delay_s - waited)
                result = GreylistResult(GL_PASSED, delayed_s=waited)
                entry["passed"] = 1
            else:
                result = GreylistResult(GL_KNOWN)
            entry["seen"] = now
            self._write_json(db, triplet_key, entry, now + p.pass_ttl_s)
            # Auto-whitelist: count this delivery, at most one per interval.
            if p.awl_deliveries:
                if client is None:
                    client = {"count": 1, "last": now, "seen": now}
                elif now - client["last"] >= p.awl_count_interval_s:
                    client = {"count": client["count"] + 1, "last": now, "seen": now}
                else:
                    client["seen"] = now
                self._write_json(db, client_key, client, now + p.awl_ttl_s)
            return result

        return await self._run_tx(run)

    async def rate_limit(
        self, key: str, limits: tuple[tuple[int, float], ...], cost: int, now: float
    ) -> RateResult:
        fields = [f"{count}/{period:g}" for count, period in limits]

        def run(db: sqlite3.Connection) -> RateResult:
            bucket = self._read_json(db, key, now) or {}
            tats = [float(bucket.get(f, 0.0)) for f in fields]
            result, new_tats = gcra(tats, limits, cost, now)
            if result.allowed:
                for f, tat in zip(fields, new_tats, strict=True):
                    bucket[f] = tat
                horizon = max(new_tats) - now
                self._write_json(db, key, bucket, now + max(horizon, 1.0))
            return result

        return await self._run_tx(run)
