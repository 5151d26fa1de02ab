"""REPLY: Message-IDs remembered from outbound mail, looked up for inbound answers."""

from __future__ import annotations

import asyncio

import pytest

from smtpproxy.common import config
from smtpproxy.common.store import StoreError, open_store
from smtpproxy.scan.checks.base import CheckContext
from smtpproxy.scan.checks.reply import ReplyCheck, message_ids, remember
from smtpproxy.scan.message import parse
from smtpproxy.transaction import ClientInfo


@pytest.mark.parametrize("label, values, ids", [
    ("one id", ["<a@b>"], ["a@b"]),
    ("folded references", ["<1@x>\r\n <2@x>\t<3@x>"], ["1@x", "2@x", "3@x"]),
    ("comments and junk around", ["(old) <a@b> garbage"], ["a@b"]),
    ("spaces inside the brackets", ["< a@b >"], ["a@b"]),
    ("no brackets, no id", ["a@b"], []),
    ("empty", [""], []),
])
def test_message_ids_are_read_from_header_values(label, values, ids):
    assert message_ids(values) == ids, label


def ctx(raw: bytes, store) -> CheckContext:
    return CheckContext(message=parse(raw), client=ClientInfo(), mail_from="", rcpt_tos=[],
                        profile="inbound", resolver=None, store=store)


def test_an_answer_names_a_remembered_id_and_a_stranger_does_not(tmp_path):
    async def go():
        store = open_store(config.StoreConfig(), str(tmp_path))
        await store.open()
        try:
            cfg = config.load(None)
            sent = parse(b"Message-ID: <abc@example.org>\r\nSubject: x\r\n\r\nbody\r\n")
            assert await remember(store, cfg.scan.reply, sent) == "abc@example.org"
            assert await remember(store, cfg.scan.reply, parse(b"Subject: no id\r\n\r\nx\r\n")) is None
            check = ReplyCheck(cfg)
            by_refs = await check.run(ctx(b"References: <old@x> <abc@example.org> <other@y>\r\n\r\nx", store))
            by_irt = await check.run(ctx(b"In-Reply-To: <abc@example.org>\r\n\r\nx", store))
            stranger = await check.run(ctx(b"In-Reply-To: <abd@example.org>\r\n\r\nx", store))
            none = await check.run(ctx(b"Subject: new\r\n\r\nx", store))
            return by_refs, by_irt, stranger, none
        finally:
            await store.close()

    by_refs, by_irt, stranger, none = asyncio.run(go())
    assert [(h.symbol, h.options) for h in by_refs] == [("REPLY", ("abc@example.org",))]
    assert [(h.symbol, h.options) for h in by_irt] == [("REPLY", ("abc@example.org",))]
    assert stranger == [] and none == []


class BrokenStore:
    def key(self, tag, *parts):
        return ":".join((tag, *parts))

    async def mget(self, keys):
        raise StoreError("down")

    async def set(self, key, value, ttl_s):
        raise StoreError("down")


def test_store_trouble_means_no_symbol_and_nothing_remembered():
    cfg = config.load(None)
    hits = asyncio.run(ReplyCheck(cfg).run(ctx(b"In-Reply-To: <a@b>\r\n\r\nx", BrokenStore())))
    assert hits == []
    assert asyncio.run(remember(BrokenStore(), cfg.scan.reply, parse(b"Message-ID: <a@b>\r\n\r\nx"))) is None
