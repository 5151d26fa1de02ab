"""REPLY: an inbound message that answers mail we sent.

Mail accepted on the profiles in ``scan.reply.profiles`` (outbound by
default) has its Message-ID remembered (``remember``, called by the hook once
the re-injection listener said 250): a SHA-256 of the id, one store key with
``scan.reply.ttl_s``, in the common store, so every MX sharing a Redis knows
it. An inbound message whose In-Reply-To or References names such an id
(at most ``max_ids``, the last ones: the newest of the thread) gets REPLY,
with the id as option. REPLY has a negative score and is marked
``skip_greylist`` in symbols.toml: an answer is never greylisted at DATA.

Only the id is trusted, and only as far as its score goes: anyone who has
seen our message (a correspondent, a list archive) can name it, so REPLY
lowers the score and never forces an action.

Store trouble means no symbol (logged), never a deferral. Mail without a
Message-ID gets one from Postfix's cleanup after the proxy; that one cannot
be remembered here.
"""

from __future__ import annotations

import hashlib
import logging
import re
from typing import ClassVar

from smtpproxy.common.config import Config, ReplyConfig
from smtpproxy.common.store import Store, StoreError
from smtpproxy.scan.checks.base import CheckContext, Hit
from smtpproxy.scan.message import Message

logger = logging.getLogger("smtpproxy.scan")

_MSGID = re.compile(r"<\s*([^<>\s]+?)\s*>")
MAX_ID_CHARS = 998


def message_ids(values: list[str]) -> list[str]:
    """The msg-ids (without angle brackets) in header values, in order."""
    return [m.group(1) for value in values for m in _MSGID.finditer(value)
            if len(m.group(1)) <= MAX_ID_CHARS]


def reply_key(store: Store, msgid: str) -> str:
    digest = hashlib.sha256(msgid.encode("utf-8", "surrogateescape")).hexdigest()
    return store.key("reply", digest)


async def remember(store: Store, cfg: ReplyConfig, message: Message) -> str | None:
    """Remember the message's Message-ID; the id for the log, or None when it has none."""
    ids = message_ids([message.header("Message-ID") or ""])
    if not ids:
        return None
    try:
        await store.set(reply_key(store, ids[0]), b"1", cfg.ttl_s)
    except StoreError as exc:
        logger.warning("reply id not remembered, store unusable: %s", exc)
        return None
    return ids[0]


class ReplyCheck:
    name: ClassVar[str] = "reply"
    symbols: ClassVar[tuple[str, ...]] = ("REPLY",)
    after: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: Config | None = None):
        self.cfg = (cfg or Config()).scan.reply

    async def run(self, ctx: CheckContext) -> list[Hit]:
        if ctx.store is None:
            return []
        ids = message_ids(ctx.message.header_all("In-Reply-To") + ctx.message.header_all("References"))
        ids = list(dict.fromkeys(reversed(ids)))[:self.cfg.max_ids]  # newest first, each once
        if not ids:
            return []
        try:
            found = await ctx.store.mget([reply_key(ctx.store, i) for i in ids])
        except StoreError as exc:
            logger.warning("reply ids not looked up, store unusable: %s", exc)
            return []
        for msgid, value in zip(ids, found, strict=True):
            if value is not None:
                return [Hit("REPLY", (msgid,))]
        return []
