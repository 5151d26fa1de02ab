"""Bayes on a real redis-server: learn, learn twice, relearn as the other class,
expiry, classification in one round trip; and moving the classifier from SQLite
to Redis with ``bayes dump`` / ``bayes restore``."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from smtpproxy.common.config import StoreConfig
from smtpproxy.common.store import open_store
from smtpproxy.scan.bayes.storage import ALREADY, LEARNED, MOVED, BayesStore, message_id
from smtpproxy.scan.bayes.tokenizer import tokenize
from smtpproxy.scan.message import parse

pytestmark = pytest.mark.integration

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def raw(i: int) -> bytes:
    return f"From: a@example.com\r\nSubject: offer {i}\r\n\r\nBuy cheap pills now {i}\r\n".encode()


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, redis_server, tmp_path):
    if request.param == "redis":
        return redis_server.url
    return "sqlite://" + str(tmp_path / "bayes.db")


def test_learn_relearn_and_classify(store_url, tmp_path):
    prefix = f"bt{os.getpid()}{id(tmp_path) % 10000}:"

    async def main():
        store = open_store(StoreConfig(url=store_url, key_prefix=prefix), str(tmp_path))
        await store.open()
        try:
            bayes = BayesStore(store, 3600)
            items = [(message_id(raw(i)), tokenize(parse(raw(i)))) for i in range(3)]
            assert await bayes.learn_many(items, "spam") == [LEARNED] * 3
            assert await bayes.learn(*items[0], "spam") == ALREADY
            assert await bayes.learn(*items[0], "ham") == MOVED
            totals, counts = await bayes.token_counts(["cheap", "pills now", "never-seen"])
            assert (totals.nspam, totals.nham) == (2, 1)
            assert counts == {"cheap": (2, 1), "pills now": (2, 1)}
            # Every key has a TTL: nothing stays forever.
            keys = [k async for k in store.scan(store.key("bayes") + "*", count=100_000)]
            assert keys
            for key in keys[:50]:
                ttl = await store.ttl(key)
                assert ttl is not None and 0 < ttl <= 3600
            short = BayesStore(store, 0.5)
            await short.learn(message_id(raw(99)), ["fleeting"], "spam")
            await asyncio.sleep(1.2)
            _, counts = await short.token_counts(["fleeting"])
            assert counts == {}
        finally:
            await store.close()

    asyncio.run(main())


def smtpproxy(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SMTPPROXY_CONFIG": ""}
    env.pop("STATE_DIRECTORY", None)
    return subprocess.run([sys.executable, "-m", "smtpproxy.cli", *args], capture_output=True,
                          timeout=120, env=env, cwd=ROOT)


def test_move_from_sqlite_to_redis(redis_server, tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.eml").write_bytes(raw(i))
    state = str(tmp_path / "state")
    assert smtpproxy("learn", "spam", "--state-dir", state, str(tmp_path / "0.eml"),
                     str(tmp_path / "1.eml")).returncode == 0
    assert smtpproxy("learn", "ham", "--state-dir", state, str(tmp_path / "2.eml")).returncode == 0
    dump = tmp_path / "bayes.jsonl"
    assert smtpproxy("bayes", "dump", "--state-dir", state, "-o", str(dump)).returncode == 0
    conf = tmp_path / "redis.toml"
    conf.write_text(f'[store]\nurl = "{redis_server.url}"\nkey_prefix = "moved{os.getpid()}:"\n')
    out = smtpproxy("bayes", "restore", "-c", str(conf), str(dump))
    assert out.returncode == 0, out.stderr
    stats = smtpproxy("bayes", "stats", "-c", str(conf)).stdout
    assert b"spam learned: 2" in stats and b"ham learned: 1" in stats
    out = smtpproxy("learn", "spam", "-c", str(conf), str(tmp_path / "0.eml"))
    assert b"1 already learned" in out.stdout
