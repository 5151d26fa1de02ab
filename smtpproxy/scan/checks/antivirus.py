"""Antivirus through clamd: the whole message, streamed with INSTREAM (scan/clamd.py).

Off until ``scan.antivirus.clamd`` names a socket. clamd gets the message
as received: it decodes the MIME parts itself and unpacks archives (zip,
rar, 7z, ...) whole, within its own limits (MaxScanSize, MaxFileSize,
MaxRecursion in clamd.conf).

- CLAM_VIRUS: clamd found something; the signature name is the option.
  The symbol forces reject (symbols.toml).
- CLAM_VIRUS_FAIL: no verdict (clamd down, slower than ``timeout_s``, or
  refusing the size: StreamMaxLength); the reason is the option.
  ``on_failure = "tempfail"`` makes it force soft reject (451, the sender
  retries), ``"accept"`` lets the message through unscanned.

Verdicts (clean or a virus, never a failure) are cached in the common store
for ``cache_ttl_s`` under a hash of the body and the header fields that
decide how clamd reads it (Content-Type, Content-Transfer-Encoding): the
same body under other MIME headers may hide something else. Store trouble
only skips the cache.
"""

from __future__ import annotations

import hashlib
import logging
from typing import ClassVar

from smtpproxy.common.config import Config
from smtpproxy.common.store import StoreError
from smtpproxy.headers import header_block_end
from smtpproxy.scan.checks.base import CheckContext, Hit
from smtpproxy.scan.clamd import ClamdError, instream

logger = logging.getLogger("smtpproxy.scan")

CLEAN = b"\0clean"


def cache_digest(ctx: CheckContext) -> str:
    raw = ctx.message.raw
    h = hashlib.sha256()
    for name in ("Content-Type", "Content-Transfer-Encoding"):
        h.update((ctx.message.header(name) or "").encode("utf-8", "surrogateescape") + b"\0")
    h.update(memoryview(raw)[header_block_end(raw):])
    return h.hexdigest()


class AntivirusCheck:
    name: ClassVar[str] = "antivirus"
    symbols: ClassVar[tuple[str, ...]] = ("CLAM_VIRUS", "CLAM_VIRUS_FAIL")
    after: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: Config | None = None):
        self.cfg = (cfg or Config()).scan.antivirus
        # What CLAM_VIRUS_FAIL forces is configuration, not the symbols table (engine.py).
        self.force_actions = {"CLAM_VIRUS_FAIL": "soft reject"} if self.cfg.on_failure == "tempfail" else {}

    async def run(self, ctx: CheckContext) -> list[Hit]:
        if not self.cfg.clamd:
            return []
        store = ctx.store if self.cfg.cache_ttl_s > 0 else None
        key = store.key("av", cache_digest(ctx)) if store is not None else ""
        if store is not None:
            try:
                cached = await store.get(key)
            except StoreError as exc:
                logger.warning("antivirus cache skipped, store unusable: %s", exc)
                store = None
            else:
                if cached is not None:
                    return [] if cached == CLEAN else [Hit("CLAM_VIRUS", (cached.decode("utf-8", "replace"),))]
        try:
            virus = await instream(self.cfg.clamd, ctx.message.raw, self.cfg.timeout_s)
        except ClamdError as exc:
            logger.warning("antivirus: no verdict: %s", exc)
            return [Hit("CLAM_VIRUS_FAIL", (str(exc),))]
        if store is not None:
            try:
                await store.set(key, virus.encode() if virus else CLEAN, self.cfg.cache_ttl_s)
            except StoreError as exc:
                logger.warning("antivirus verdict not cached, store unusable: %s", exc)
        return [Hit("CLAM_VIRUS", (virus,))] if virus else []
