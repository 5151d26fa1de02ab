"""One contract, every backend: SQLite, a real redis-server (directly and through
Sentinel), a 3-master Redis Cluster.

Time is simulated through the ``now`` argument, so nothing here sleeps
longer than a TTL check and nothing asserts on elapsed time.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from smtpproxy.common.config import StoreConfig
from smtpproxy.common.store import (
    GL_AWL,
    GL_EARLY,
    GL_KNOWN,
    GL_NEW,
    GL_PASSED,
    GreylistParams,
    Store,
    open_store,
)

P = GreylistParams(
    delay_s=300, retry_window_s=2 * 86400, pass_ttl_s=35 * 86400,
    awl_deliveries=5, awl_count_interval_s=3600, awl_ttl_s=35 * 86400,
)


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(params=["sqlite", "redis", "sentinel", "cluster"])
def store_factory(request, tmp_path):
    """A function returning a fresh, opened Store with a unique key prefix."""
    counter = iter(range(1000))

    async def make() -> Store:
        prefix = f"t{time.monotonic_ns()}{next(counter)}:"
        if request.param == "sqlite":
            url = f"sqlite://{tmp_path}/store.db"
        elif request.param == "redis":
            url = request.getfixturevalue("redis_server").url
        elif request.param == "sentinel":
            sentinel = request.getfixturevalue("redis_sentinel")
            url = f"redis+sentinel://127.0.0.1:{sentinel.port}/mymaster/0"
        else:
            nodes = request.getfixturevalue("redis_cluster")
            url = "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in nodes)
        store = open_store(StoreConfig(url=url, key_prefix=prefix, timeout_s=5.0), str(tmp_path))
        await store.open()
        return store

    if request.param != "sqlite":
        # Resolve server fixtures outside the event loop.
        request.getfixturevalue({"redis": "redis_server", "sentinel": "redis_sentinel",
                                 "cluster": "redis_cluster"}[request.param])
    return make


pytestmark = pytest.mark.integration


def test_generic_values_roundtrip(store_factory):
    async def go():
        s = await store_factory()
        try:
            k = s.key("bayes", "tok", "viagra")
            assert await s.get(k) is None
            await s.set(k, b"\x00\xffvalue", 60)
            assert await s.get(k) == b"\x00\xffvalue"
            ttl = await s.ttl(k)
            assert ttl is not None and 0 < ttl <= 60
            assert await s.incr(s.key("c", "n"), 2, 60) == 2
            assert await s.incr(s.key("c", "n"), 3, 60) == 5
            assert await s.delete(k) is True
            assert await s.delete(k) is False
            assert await s.get(k) is None
            assert await s.ttl(k) is None
        finally:
            await s.close()

    run(go())


def test_batch_values_for_many_keys(store_factory):
    async def go():
        s = await store_factory()
        try:
            keys = [s.key(f"tok{i}", "n") for i in range(50)]  # many hash slots
            assert await s.mget(keys) == [None] * 50
            assert await s.incr_many({k: i for i, k in enumerate(keys)}, 60) == list(range(50))
            assert await s.incr_many({keys[3]: 10, keys[4]: -1}, 60) == [13, 3]
            values = await s.mget(keys)
            assert values[3] == b"13" and values[4] == b"3" and values[0] == b"0"
            # More keys than one query takes, in any order, some twice, some absent.
            bulk = [s.key("bulk", f"{i}") for i in range(1200)]
            await s.incr_many({k: 1 for k in bulk[::2]}, 60)
            got = await s.mget(bulk[::-1] + bulk[:3])
            assert got[:1200] == [None if i % 2 else b"1" for i in range(1199, -1, -1)]
            assert got[1200:] == [b"1", None, b"1"]
            assert (await s.ttl(keys[49])) > 0
            assert await s.mget([]) == []
        finally:
            await s.close()

    run(go())


def test_set_many_writes_every_key_with_its_ttl(store_factory):
    async def go():
        s = await store_factory()
        try:
            keys = [s.key("history", "row", str(i)) for i in range(30)]
            await s.set_many({k: f"v{i}".encode() for i, k in enumerate(keys)}, 60)
            assert await s.mget(keys) == [f"v{i}".encode() for i in range(30)]
            assert 0 < await s.ttl(keys[7]) <= 60
            await s.set_many({}, 60)
        finally:
            await s.close()

    run(go())


def test_expired_value_reads_absent(store_factory):
    async def go():
        s = await store_factory()
        try:
            k = s.key("x", "short")
            await s.set(k, b"1", 0.05)
            await asyncio.sleep(0.3)
            assert await s.get(k) is None
        finally:
            await s.close()

    run(go())


def test_greylist_new_early_passed_known(store_factory):
    async def go():
        s = await store_factory()
        try:
            t, c = s.key("n1", "gl", "t1"), s.key("n1", "awl")
            now = time.time()
            r = await s.greylist(t, c, now, P)
            assert r.state == GL_NEW and r.wait_s == pytest.approx(300)
            r = await s.greylist(t, c, now + 100, P)
            assert r.state == GL_EARLY and r.wait_s == pytest.approx(200)
            r = await s.greylist(t, c, now + 400, P)
            assert r.state == GL_PASSED and r.delayed_s == pytest.approx(400)
            r = await s.greylist(t, c, now + 500, P)
            assert r.state == GL_KNOWN
            fields = await s.hgetall(t)
            assert fields["passed"] == "1"
            assert (await s.ttl(t)) > 0 and (await s.ttl(c)) > 0
        finally:
            await s.close()

    run(go())


def test_greylist_retry_after_window_starts_over(store_factory):
    async def go():
        s = await store_factory()
        try:
            t, c = s.key("n2", "gl", "t"), s.key("n2", "awl")
            now = time.time()
            assert (await s.greylist(t, c, now, P)).state == GL_NEW
            late = now + P.delay_s + P.retry_window_s + 1
            assert (await s.greylist(t, c, late, P)).state == GL_NEW
        finally:
            await s.close()

    run(go())


def test_passed_triplet_forgotten_after_pass_ttl(store_factory):
    async def go():
        s = await store_factory()
        try:
            t, c = s.key("n3", "gl", "t"), s.key("n3", "awl")
            p = GreylistParams(300, 86400, 1000, 0, 3600, 1000)
            now = time.time()
            await s.greylist(t, c, now, p)
            assert (await s.greylist(t, c, now + 300, p)).state == GL_PASSED
            assert (await s.greylist(t, c, now + 1200, p)).state == GL_KNOWN
            assert (await s.greylist(t, c, now + 2201, p)).state == GL_NEW
        finally:
            await s.close()

    run(go())


def test_auto_whitelist_counts_one_delivery_per_interval(store_factory):
    async def go():
        s = await store_factory()
        try:
            c = s.key("n4", "awl")
            now = time.time()
            t = s.key("n4", "gl", "t")
            await s.greylist(t, c, now, P)
            now += 300
            assert (await s.greylist(t, c, now, P)).state == GL_PASSED  # delivery 1
            for _ in range(10):  # same hour: not counted again
                now += 60
                assert (await s.greylist(t, c, now, P)).state == GL_KNOWN
            for _ in range(3):  # deliveries 2..4, an hour apart
                now += 3600
                assert (await s.greylist(t, c, now, P)).state == GL_KNOWN
            now += 3600  # delivery 5
            assert (await s.greylist(t, c, now, P)).state == GL_KNOWN
            # A brand-new triplet from that network now passes at once.
            other = s.key("n4", "gl", "other")
            assert (await s.greylist(other, c, now + 1, P)).state == GL_AWL
        finally:
            await s.close()

    run(go())


def test_concurrent_first_sightings_create_one_entry(store_factory):
    async def go():
        s = await store_factory()
        try:
            t, c = s.key("n5", "gl", "t"), s.key("n5", "awl")
            now = time.time()
            results = await asyncio.gather(*(s.greylist(t, c, now, P) for _ in range(40)))
            states = sorted(r.state for r in results)
            assert states.count(GL_NEW) == 1 and states.count(GL_EARLY) == 39
        finally:
            await s.close()

    run(go())


def test_rate_limit_burst_then_steady_rate(store_factory):
    async def go():
        s = await store_factory()
        try:
            k = s.key("rl:u1", "b")
            limits = ((10, 60.0),)  # 10/1m: burst 10, then one every 6 s
            now = time.time()
            for _ in range(10):
                assert (await s.rate_limit(k, limits, 1, now)).allowed
            r = await s.rate_limit(k, limits, 1, now)
            assert not r.allowed and r.retry_after_s == pytest.approx(6.0) and r.limit_index == 0
            assert not (await s.rate_limit(k, limits, 1, now + 5.9)).allowed
            assert (await s.rate_limit(k, limits, 1, now + 6.0)).allowed
            assert not (await s.rate_limit(k, limits, 1, now + 6.0)).allowed
            # A long idle period refills to the full burst, not beyond.
            later = now + 3600
            allowed = [(await s.rate_limit(k, limits, 1, later)).allowed for _ in range(12)]
            assert allowed.count(True) == 10
            assert (await s.ttl(k)) > 0
        finally:
            await s.close()

    run(go())


def test_rate_limit_refusal_consumes_nothing(store_factory):
    async def go():
        s = await store_factory()
        try:
            k = s.key("rl:u2", "b")
            limits = ((100, 60.0), (3, 3600.0))
            now = time.time()
            for _ in range(3):
                assert (await s.rate_limit(k, limits, 1, now)).allowed
            r = await s.rate_limit(k, limits, 1, now)
            assert not r.allowed and r.limit_index == 1
            assert r.retry_after_s == pytest.approx(1200.0)
            # The 100/1m limit was not charged by the refused requests.
            r = await s.rate_limit(k, ((100, 60.0),), 97, now)
            assert r.allowed
        finally:
            await s.close()

    run(go())


def test_rate_limit_exact_under_concurrency(store_factory):
    async def go():
        s = await store_factory()
        try:
            k = s.key("rl:u3", "b")
            now = time.time()
            results = await asyncio.gather(
                *(s.rate_limit(k, ((25, 3600.0),), 1, now) for _ in range(100))
            )
            assert sum(r.allowed for r in results) == 25
        finally:
            await s.close()

    run(go())


def test_cost_larger_than_burst_is_refused(store_factory):
    async def go():
        s = await store_factory()
        try:
            k = s.key("rl:u4", "b")
            assert not (await s.rate_limit(k, ((5, 60.0),), 6, time.time())).allowed
        finally:
            await s.close()

    run(go())


def test_scan_lists_keys_by_pattern(store_factory):
    async def go():
        s = await store_factory()
        try:
            for i in range(5):
                await s.greylist(s.key(f"net{i}", "gl", f"t{i}"), s.key(f"net{i}", "awl"),
                                 time.time(), P)
            keys = [k async for k in s.scan(s.prefix + "*:gl:*")]
            assert len(keys) == 5
        finally:
            await s.close()

    run(go())
