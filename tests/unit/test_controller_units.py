"""Controller and history pieces without a daemon: hashes, access rules, references, rows."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys

import pytest

from smtpproxy.common import config
from smtpproxy.common.config import ConfigError, ControllerConfig, HistoryConfig, StoreConfig
from smtpproxy.common.store.sqlite import SQLiteStore
from smtpproxy.controller import history
from smtpproxy.controller.auth import (
    READ,
    WRITE,
    Authenticator,
    cross_origin,
    hash_password,
    verify_password,
)
from smtpproxy.controller.history import (
    REF_ALPHABET,
    HistoryStore,
    HistoryWriter,
    Throughput,
    header_facts,
    new_ref,
    queue_id,
    with_ref,
)
from tests.support.net import free_port

READ_HASH = hash_password("reader")
WRITE_HASH = hash_password("writer")


def test_password_hash_verifies_only_its_password():
    assert verify_password("reader", READ_HASH)
    assert not verify_password("Reader", READ_HASH)
    assert not verify_password("reader", "$scrypt$garbage")
    assert READ_HASH != hash_password("reader")  # salted


def test_configtest_refuses_a_plain_text_password_naming_the_key(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('[controller]\nenable_password = "hunter2"\n')
    out = subprocess.run([sys.executable, "-m", "smtpproxy.cli", "configtest", "-c", str(conf)],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "controller.enable_password" in out.stderr
    assert "hunter2" not in out.stderr


def test_pw_prints_a_hash_that_configtest_accepts(tmp_path):
    out = subprocess.run([sys.executable, "-m", "smtpproxy.cli", "pw", "-p", "s3cret"],
                         capture_output=True, text=True, check=True)
    hashed = out.stdout.strip().splitlines()[-1]
    assert verify_password("s3cret", hashed)
    conf = tmp_path / "c.toml"
    conf.write_text(f'[controller]\npassword = "{hashed}"\n')
    config.load(str(conf))


@pytest.mark.parametrize("text, key", [
    ('[controller]\nlisten = "nowhere"', "controller.listen"),
    ('[controller]\nsecure_ip = ["10.0.0.0/33"]', "controller.secure_ip[0]"),
    ('[controller]\nmax_body_bytes = -1', "controller.max_body_bytes"),
    ('[history]\nmax_rows = 0', "history.max_rows"),
    ('[history]\nreference_format = " (ref)"', "history.reference_format"),
])
def test_bad_controller_and_history_values_name_the_key(tmp_path, text, key):
    conf = tmp_path / "c.toml"
    conf.write_text(text)
    with pytest.raises(ConfigError) as err:
        config.load(str(conf))
    assert err.value.key == key


BOTH = ControllerConfig(password=READ_HASH, enable_password=WRITE_HASH, secure_ip=("10.9.0.0/16",))


@pytest.mark.parametrize("label, cfg, addr, password, need, status", [
    ("read with the read password", BOTH, "192.0.2.1", "reader", READ, 0),
    ("write with the read password", BOTH, "192.0.2.1", "reader", WRITE, 403),
    ("write with the write password", BOTH, "192.0.2.1", "writer", WRITE, 0),
    ("read with the write password", BOTH, "192.0.2.1", "writer", READ, 0),
    ("no password", BOTH, "192.0.2.1", None, READ, 403),
    ("wrong password", BOTH, "192.0.2.1", "guess", READ, 403),
    ("secure_ip needs none", BOTH, "10.9.1.1", None, WRITE, 0),
    ("unix socket needs none", BOTH, None, None, WRITE, 0),
    ("no read password: reads open", ControllerConfig(enable_password=WRITE_HASH),
     "192.0.2.1", None, READ, 0),
    ("no write password: password writes", ControllerConfig(password=READ_HASH),
     "192.0.2.1", "reader", WRITE, 0),
    ("no passwords: no writes", ControllerConfig(), "192.0.2.1", None, WRITE, 403),
    ("no passwords: reads open", ControllerConfig(), "192.0.2.1", None, READ, 0),
])
def test_access_rules(label, cfg, addr, password, need, status):
    async def check():
        return await Authenticator(cfg).check(addr, password, need)
    assert asyncio.run(check()).status == status, label


def test_wrong_passwords_block_the_address_for_the_window():
    cfg = dataclasses.replace(BOTH, auth_failures_max=2)

    async def run():
        auth = Authenticator(cfg)
        out = [(await auth.check("192.0.2.7", "x", READ)).status for _ in range(3)]
        out.append((await auth.check("192.0.2.7", "reader", READ)).status)
        out.append((await auth.check("192.0.2.8", "reader", READ)).status)
        return out
    assert asyncio.run(run()) == [403, 403, 429, 429, 0]


@pytest.mark.parametrize("headers, refused", [
    ({}, False),
    ({"Origin": "http://127.0.0.1:11334", "Host": "127.0.0.1:11334"}, False),
    ({"Origin": "https://evil.example", "Host": "127.0.0.1:11334"}, True),
    ({"Origin": "null", "Host": "127.0.0.1:11334"}, True),
    ({"Sec-Fetch-Site": "cross-site"}, True),
    ({"Sec-Fetch-Site": "same-origin"}, False),
])
def test_cross_origin(headers, refused):
    assert cross_origin(headers) is refused


def test_references_and_replies():
    refs = {new_ref() for _ in range(200)}
    assert len(refs) > 190 and all(len(r) == 6 and set(r) <= set(REF_ALPHABET) for r in refs)
    assert with_ref("550 5.7.1 Rejected as spam", "7KQ2M9", " (ref {ref})") == \
        "550 5.7.1 Rejected as spam (ref 7KQ2M9)"
    assert with_ref("550 5.7.1 x", "7KQ2M9", "") == "550 5.7.1 x"
    assert queue_id("2.0.0 Ok: 1234 bytes queued as 4ZxQ3k1Hhz2") == "4ZxQ3k1Hhz2"
    assert queue_id("2.0.0 Ok") == ""


def test_header_facts_decode_and_take_the_first():
    header = (b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nFrom: A <a@example.org>\r\n"
              b"Message-ID: <id1@example.org>\r\nSubject: second\r\n\r\n")
    assert header_facts(header) == {"subject": "Grüße", "from": "A <a@example.org>",
                                    "message-id": "<id1@example.org>"}


def test_throughput_series_by_minute():
    t = Throughput()
    for _ in range(3):
        t.count("reject", 600.0)
    t.count("no action", 660.0)
    series = t.series(660.0, minutes=2)
    assert series["reject"] == [(600, 3.0), (660, 0.0)]
    assert series["no action"] == [(600, 0.0), (660, 1.0)]


def test_history_store_is_bounded_and_finds_rows(tmp_path):
    async def run():
        store = SQLiteStore(StoreConfig(), str(tmp_path / "s.db"))
        await store.open()
        try:
            history = HistoryStore(store, HistoryConfig(max_rows=5))
            await history.write([{"ref": f"REF{i:03d}", "qid": f"Q{i}", "message-id": f"m{i}@x",
                                  "unix_time": 1000.0 + i} for i in range(8)])
            rows = [row async for row in history.newest()]
            assert [r["ref"] for r in rows] == ["REF007", "REF006", "REF005", "REF004", "REF003"]
            assert (await history.find("ref007"))["qid"] == "Q7"
            assert (await history.find("Q6"))["ref"] == "REF006"
            assert (await history.find("<m5@x>"))["ref"] == "REF005"
            assert await history.find("REF001") is None  # overwritten in its slot
            assert await history.reset() == 5
            assert [row async for row in history.newest()] == []
        finally:
            await store.close()
    asyncio.run(run())


def test_kept_messages_come_back_whole_within_a_compressed_budget(monkeypatch):
    async def run():
        writer = HistoryWriter(HistoryConfig(keep_messages_bytes=4096), "mx.example")
        text = b"Subject: offer\r\n\r\n" + b"the same line of mail again\r\n" * 200  # ~6 KB
        noise = os.urandom(3000)  # does not compress
        await writer._keep(1, text)
        assert writer.kept(1) == text and writer._kept_bytes < len(text) // 4
        monkeypatch.setattr(history, "INLINE_COMPRESS_BYTES", 100)  # the thread path
        await writer._keep(2, noise)
        assert writer.kept(2) == noise and writer.kept(1) == text
        await writer._keep(3, noise)  # over the budget: the oldest go first
        assert writer.kept(1) is None and writer.kept(2) is None and writer.kept(3) == noise
        assert writer._kept_bytes <= 4096
    asyncio.run(run())


# A fresh interpreter: this one imported aiohttp with the controller's modules.
CONTROLLER_WHEN_ENABLED_PROBE = """
import asyncio, socket, sys
from smtpproxy import cli, daemon
from smtpproxy.common import config
from smtpproxy.controller.auth import hash_password
assert "aiohttp" not in sys.modules, "imported with the daemon"
handle = daemon._ControllerWhenEnabled(service=None)

async def main():
    await handle.serve(config.load(None))  # off, the default
    assert handle.controller is None and "aiohttp" not in sys.modules
    on = config.load(None, {"controller.enabled": True, "controller.listen": "127.0.0.1:%d",
                            "controller.password": hash_password("secret")})
    runner = await handle.bind(on)  # a reload that turns it on
    await handle.swap(on, runner)
    assert "aiohttp" in sys.modules and handle.controller.listen == "127.0.0.1:%d"
    socket.create_connection(("127.0.0.1", %d), timeout=5).close()
    await handle.close()

asyncio.run(main())
print("ok")
"""


def test_controller_and_aiohttp_are_imported_only_once_enabled():
    port = free_port()
    result = subprocess.run([sys.executable, "-c", CONTROLLER_WHEN_ENABLED_PROBE % (port, port, port)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"
