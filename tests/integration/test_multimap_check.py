"""MultimapCheck with real files and worker threads: reload on change without a restart,
the event loop kept running while a large map loads, forced actions reaching the
engine's result and the proxy's verdict."""

from __future__ import annotations

import asyncio

import pytest

from smtpproxy.common import config
from smtpproxy.scan.checks.all import all_checks
from smtpproxy.scan.checks.base import CheckContext, Hit
from smtpproxy.scan.checks.multimap import MultimapCheck
from smtpproxy.scan.engine import Engine
from smtpproxy.scan.hook import EngineHook
from smtpproxy.scan.message import parse
from smtpproxy.transaction import ClientInfo, Transaction

pytestmark = pytest.mark.integration

RAW = (b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: Lunch\r\n"
       b"Date: Mon, 2 Jan 2026 10:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n\r\nHello Bob\r\n")


def context(addr="192.0.2.7", mail_from="alice@example.org") -> CheckContext:
    return CheckContext(message=parse(RAW), client=ClientInfo(addr=addr, helo="mail.example.org"),
                        mail_from=mail_from, rcpt_tos=["bob@example.net"], profile="inbound",
                        resolver=None)


def make_cfg(maps, interval_s=0.05):
    return config.load(None, {"scan.multimap.maps": maps,
                              "scan.multimap.map_check_interval_s": interval_s,
                              "scan.dnsbl.enabled": False})


async def until(check: MultimapCheck, ctx_factory, wanted, rounds=400) -> list[Hit]:
    """Scan until the hits are ``wanted`` (a reload is in the background), a bounded number of times."""
    hits: list[Hit] = []
    for _ in range(rounds):
        hits = await check.run(ctx_factory())
        if hits == wanted:
            return hits
        await asyncio.sleep(0.02)
    return hits


def test_a_changed_file_is_reloaded_without_restart(tmp_path):
    path = tmp_path / "clients"
    path.write_text("198.51.100.0/24\n")
    check = MultimapCheck(make_cfg([{"type": "ip", "file": str(path), "symbol": "LOCAL_BL"}]))

    async def go():
        listed = [Hit("LOCAL_BL", ("192.0.2.7",))]
        assert await check.run(context()) == []  # the first load is awaited
        path.write_text("198.51.100.0/24\n192.0.2.0/24\n")
        assert await until(check, context, listed) == listed
        path.write_text("198.51.100.0/24\n")
        assert await until(check, context, []) == []
        # A file that goes away keeps what it said last (and is logged).
        path.write_text("192.0.2.7\n")
        assert await until(check, context, listed) == listed
        path.unlink()
        for _ in range(20):
            await asyncio.sleep(0.02)
            assert await check.run(context()) == listed
    asyncio.run(go())


def test_a_rebuilt_check_loads_its_maps_before_its_first_answer(tmp_path):
    """A reload (SIGHUP) builds new checks: their maps are never taken as empty."""
    path = tmp_path / "senders"
    path.write_text("example.org\n")
    cfg = make_cfg([{"type": "sender", "file": str(path), "symbol": "LOCAL_SENDER"}], interval_s=60)
    for _ in range(3):
        hits = asyncio.run(MultimapCheck(cfg).run(context()))
        assert hits == [Hit("LOCAL_SENDER", ("alice@example.org",))]


def test_the_event_loop_runs_while_a_large_map_loads(tmp_path):
    path = tmp_path / "big"
    path.write_text("".join(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}\n" for i in range(200_000))
                    + "192.0.2.7\n")
    check = MultimapCheck(make_cfg([{"type": "ip", "file": str(path), "symbol": "BIG_MAP"}]))

    async def go():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        task = asyncio.ensure_future(ticker())
        hits = await check.run(context())
        task.cancel()
        return hits, ticks
    hits, ticks = asyncio.run(go())
    assert hits == [Hit("BIG_MAP", ("192.0.2.7",))]
    assert ticks > 1  # the file was read and compiled in a worker thread


@pytest.mark.parametrize("label, action, symbol_score, addr, expected_action", [
    ("a block list forces reject", "reject", 0.0, "192.0.2.7", "reject"),
    ("a map may force a soft reject", "soft reject", 0.0, "192.0.2.7", "soft reject"),
    ("a whitelist forces no action despite its score", "no action", 20.0, "192.0.2.7", "no action"),
    ("score only: greylist threshold", "", 4.5, "192.0.2.7", "greylist"),
    ("no match, no action", "reject", 0.0, "198.51.100.1", "no action"),
])
def test_forced_action_reaches_the_engine(tmp_path, label, action, symbol_score, addr, expected_action):
    path = tmp_path / "clients"
    path.write_text("192.0.2.0/24\n")
    cfg = make_cfg([{"type": "ip", "file": str(path), "symbol": "LOCAL_MAP", "score": symbol_score,
                     "action": action, "description": "local map"}])
    engine = Engine(cfg.scan, all_checks(cfg))
    result = asyncio.run(engine.scan(context(addr=addr)))
    assert result.action == expected_action, (label, result.summary())
    if action and addr == "192.0.2.7":
        assert result.forced_by == "LOCAL_MAP"


def test_forced_reject_is_the_proxys_550(tmp_path):
    path = tmp_path / "subjects"
    path.write_text("/^lunch$/\n")
    cfg = make_cfg([{"type": "header", "header": "Subject", "file": str(path), "symbol": "BAD_SUBJECT",
                     "score": 1.0, "action": "reject"}])
    hook = EngineHook(cfg, Engine(cfg.scan, all_checks(cfg)), None, None, "mx.example.test")
    txn = Transaction(session_id="S", listener="inbound", profile="inbound",
                      client=ClientInfo(addr="192.0.2.7"), mail_from="alice@example.org",
                      mail_options=[], rcpt_tos=["bob@example.net"], rcpt_options=[[]], content=RAW)
    verdict = asyncio.run(hook.scan(txn))
    assert (verdict.action, verdict.reply) == ("reject", cfg.scan.reject_reply)
    assert "BAD_SUBJECT" in verdict.summary
