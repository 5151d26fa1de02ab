"""Greylisting at end-of-data: the scan's "greylist" action.

A message whose score reaches the greylist threshold is deferred (451 4.7.1,
scan.greylist_reply) the first time it is seen; its retry is let through
after ``scan.greylist_delay_s`` and within ``scan.greylist_window_s``. The
key is the envelope (sender, sorted recipients) and the body hash, not the
client address, so a sending pool that retries from another IP still
passes. The first sighting is kept in the common store (key prefix
``scangl``), so every MX that shares the store knows it.

Store trouble never defers mail: the message passes (logged). Without a
store nothing is greylisted.
"""

from __future__ import annotations

import hashlib
import logging
import time

from smtpproxy.common.config import ScanConfig
from smtpproxy.common.store import Store, StoreError
from smtpproxy.headers import header_block_end
from smtpproxy.transaction import Transaction

logger = logging.getLogger("smtpproxy.scan")


def body_hash(content: bytes) -> str:
    return hashlib.sha256(content[header_block_end(content):]).hexdigest()


async def greylist(store: Store | None, scan: ScanConfig, txn: Transaction) -> float | None:
    """Seconds the sender waited when the retry is let through; None to defer."""
    if store is None:
        return 0.0
    identity = "\0".join([txn.mail_from, *sorted(txn.rcpt_tos), body_hash(txn.content)])
    # Envelope bytes that are not UTF-8 arrive as surrogate escapes (server.py):
    # hashed as the bytes they were, like any other address.
    key = store.key("scangl", hashlib.sha256(identity.encode("utf-8", "surrogateescape")).hexdigest())
    now = time.time()
    try:
        first = await store.get(key)
        if first is None:
            await store.set(key, repr(now).encode(), scan.greylist_window_s)
            return None
        waited = now - float(first)
    except (StoreError, ValueError) as exc:
        logger.warning("greylisting skipped, store unusable: %s", exc)
        return 0.0
    return waited if waited >= scan.greylist_delay_s else None
