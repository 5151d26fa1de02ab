"""SQLite specifics: group commit keeps each decision atomic; several connections share a file."""

from __future__ import annotations

import asyncio
import time

import pytest

from smtpproxy.common.config import StoreConfig
from smtpproxy.common.store import GL_NEW, GreylistParams, StoreError
from smtpproxy.common.store.sqlite import SQLiteStore

P = GreylistParams(300, 86400, 35 * 86400, 5, 3600, 35 * 86400)


def test_failing_decision_in_a_batch_rolls_back_alone(tmp_path):
    async def go():
        s = SQLiteStore(StoreConfig(), str(tmp_path / "s.db"))
        await s.open()
        try:
            bad_t, bad_c = s.key("bad", "t", "x"), s.key("bad", "awl")
            await s.set(bad_c, b"not json", 60)  # a corrupt entry
            good = [(s.key(f"g{i}", "t", "x"), s.key(f"g{i}", "awl")) for i in range(5)]
            now = time.time()
            results = await asyncio.gather(
                s.greylist(bad_t, bad_c, now, P), *(s.greylist(t, c, now, P) for t, c in good),
                return_exceptions=True,
            )
            assert isinstance(results[0], StoreError)
            assert [r.state for r in results[1:]] == [GL_NEW] * 5
            for t, _ in good:  # committed
                assert (await s.hgetall(t))["passed"] == "0"
            assert await s.hgetall(bad_t) == {}  # rolled back
        finally:
            await s.close()

    asyncio.run(go())


def test_two_connections_on_one_file_count_exactly(tmp_path):
    async def go():
        a = SQLiteStore(StoreConfig(), str(tmp_path / "shared.db"))
        b = SQLiteStore(StoreConfig(), str(tmp_path / "shared.db"))
        await a.open()
        await b.open()
        try:
            key, now = a.key("rl:x", "b"), time.time()
            results = await asyncio.gather(*(
                (a if i % 2 else b).rate_limit(key, ((25, 3600.0),), 1, now) for i in range(100)
            ))
            assert sum(r.allowed for r in results) == 25
        finally:
            await a.close()
            await b.close()

    asyncio.run(go())


def test_purge_deletes_only_expired_rows(tmp_path):
    async def go():
        s = SQLiteStore(StoreConfig(), str(tmp_path / "p.db"))
        await s.open()
        try:
            await s.set(s.key("a", "old"), b"1", 10)
            await s.set(s.key("a", "new"), b"1", 1000)
            assert await s.purge(now=time.time() + 100) == 1
            assert await s.get(s.key("a", "new")) == b"1"
        finally:
            await s.close()

    asyncio.run(go())


def test_purge_walks_every_chunk_and_an_old_file_loses_its_exp_index(tmp_path, monkeypatch):
    import sqlite3

    from smtpproxy.common.store import sqlite as sqlite_store

    path = str(tmp_path / "chunks.db")
    old = sqlite3.connect(path)  # a file made before the exp index went away
    old.executescript("CREATE TABLE kv (k TEXT PRIMARY KEY, v BLOB NOT NULL, exp REAL NOT NULL)"
                      " WITHOUT ROWID; CREATE INDEX kv_exp ON kv (exp);")
    old.close()
    monkeypatch.setattr(sqlite_store, "PURGE_CHUNK", 7)

    async def go():
        s = SQLiteStore(StoreConfig(), path)
        await s.open()
        try:
            # 50 rows over 8 chunks, every third one short-lived.
            await s.incr_many({s.key("t", f"{i:03}"): 1 for i in range(50) if i % 3}, 1000)
            await s.incr_many({s.key("t", f"{i:03}"): 1 for i in range(50) if not i % 3}, 10)
            assert await s.purge(now=time.time() + 100) == 17
            left = await s.mget([s.key("t", f"{i:03}") for i in range(50)])
            assert [i for i, v in enumerate(left) if v is not None] == [i for i in range(50) if i % 3]
            assert await s.purge(now=time.time() + 100) == 0
        finally:
            await s.close()

    asyncio.run(go())
    indexes = sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type = 'index'"
                                            " AND name = 'kv_exp'").fetchall()
    assert indexes == []


def test_closed_store_raises_store_error(tmp_path):
    async def go():
        s = SQLiteStore(StoreConfig(), str(tmp_path / "c.db"))
        await s.open()
        await s.close()
        with pytest.raises(StoreError):
            await s.get("x")

    asyncio.run(go())
