"""The scan hook: the scoring engine behind the proxy's end-of-data contract.

``EngineHook.scan(txn)`` parses the message once (scan/message.py, bounded;
a big message in a worker thread), runs the
checks (scan/engine.py), lets Bayes autolearn, and turns the action into a
Verdict (smtpproxy/transaction.py):

  reject           550 5.7.1 (scan.reject_reply); nothing is queued
  soft reject      451 4.7.1 (scan.soft_reject_reply); the sender retries
  greylist         451 4.7.1 on first sight, the retry accepted (greylist.py)
  rewrite subject  accepted, Subject rewritten
  add header       accepted with "X-Spam: Yes"
  no action        accepted

An accepted message carries the result headers (results.py), unless its
listener's profile says otherwise (``result_headers``: the outbound default
adds none), and the ARC chain status the ARC check verified, which the
signer seals with. Which checks run and which actions the score may pick
are the profile's too (engine.py, ``ProfileSettings``).

``build_hook(cfg, store, resolver, hostname)`` assembles it at start-up and
on reload; the daemon owns the store and the resolver and hands them in.
"""

from __future__ import annotations

import asyncio
import logging

from smtpproxy.common.config import Config
from smtpproxy.common.store import Store
from smtpproxy.scan.bayes.autolearn import autolearn
from smtpproxy.scan.checks.all import all_checks
from smtpproxy.scan.checks.base import CheckContext
from smtpproxy.scan.checks.reply import remember
from smtpproxy.scan.engine import Engine, ScanResult, check_profile_names
from smtpproxy.scan.greylist import greylist
from smtpproxy.scan.message import parse
from smtpproxy.scan.results import own_authres, result_headers
from smtpproxy.transaction import Transaction, Verdict

logger = logging.getLogger("smtpproxy.scan")

# Parsing is bounded (scan/message.py: ~10 ms at worst for this much), so a
# message up to this size is parsed on the event loop; a bigger one in a
# worker thread, where the loop keeps answering other sessions while it
# runs (the parser is pure Python and gives the GIL up every few ms) and the
# scan's timeout covers the wait.
INLINE_PARSE_MAX_BYTES = 256 * 1024


class EngineHook:
    """The scan hook the proxy calls at end-of-data when scanning is enabled."""

    def __init__(self, cfg: Config, engine: Engine, store: Store | None, resolver, authserv_id: str):
        self.cfg = cfg
        self.engine = engine
        self.store = store
        self.resolver = resolver
        self.authserv_id = authserv_id
        self._own_ar = own_authres(authserv_id)

    async def scan(self, txn: Transaction) -> Verdict:
        if len(txn.content) <= INLINE_PARSE_MAX_BYTES:
            message = parse(txn.content)
        else:
            message = await asyncio.to_thread(parse, txn.content)
        ctx = CheckContext(
            message=message, client=txn.client, mail_from=envelope_text(txn.mail_from),
            rcpt_tos=[envelope_text(r) for r in txn.rcpt_tos], profile=txn.profile, resolver=self.resolver, store=self.store,
        )
        result = await self.engine.scan(ctx)
        if self.store is not None and self.cfg.scan.bayes.autolearn:
            learned = await autolearn(self.store, self.cfg.scan.bayes, ctx.message, result, txn.profile)
            if learned:
                logger.info("bayes autolearn: %s", learned)
        verdict = await self.verdict(result, txn)
        if (verdict.action == "accept" and self.store is not None
                and txn.profile in self.cfg.scan.reply.profiles):
            verdict.after_accept = self._remember(txn, message)
        verdict.scan_action = result.action
        verdict.symbols = tuple(result.symbols)
        verdict.scan_seconds = result.elapsed_s
        verdict.scan_result = result
        return verdict

    def _remember(self, txn: Transaction, message):
        """After the 250: the Message-ID, for REPLY to answers (checks/reply.py)."""
        store, cfg = self.store, self.cfg.scan.reply

        async def after_accept() -> None:
            msgid = await remember(store, cfg, message)
            if msgid:
                logger.debug("%s: remembered Message-ID <%s>", txn.session_id, msgid)

        return after_accept

    async def verdict(self, result: ScanResult, txn: Transaction) -> Verdict:
        scan = self.cfg.scan
        action = result.action
        summary = result.summary()
        if action == "reject":
            return Verdict("reject", scan.reject_reply, summary=summary)
        if action == "soft reject":
            return Verdict("tempfail", scan.soft_reject_reply, summary=summary)
        if action == "greylist":
            waited = await greylist(self.store, scan, txn)
            if waited is None:
                return Verdict("tempfail", scan.greylist_reply, summary=summary + " greylist=deferred")
            summary += f" greylist=passed after {waited:.0f}s"
        add, remove = result_headers(result, self.authserv_id, scan, txn.content)
        auth_results = dict(add).get("Authentication-Results", "")
        if not self.engine.settings_for(txn.profile).result_headers:
            # Forged copies still go; only the action's own edit (a rewritten
            # Subject) stays. The ARC sealer still gets what we verified.
            add = [(name, value) for name, value in add if name == "Subject"]
        arc = result.facts.get("arc")
        return Verdict(
            "accept", add_headers=add, remove_headers=remove, remove_matching=[self._own_ar],
            auth_results=auth_results, summary=summary,
            arc_result=arc.get("result") if arc and arc.get("reason") != "no resolver" else None,
        )


def envelope_text(address: str) -> str:
    """An envelope address as the checks see it: text that encodes.

    Bytes that are not UTF-8 (a front smtpd with ``smtputf8_enable = no``
    passes them on) reach us as surrogate escapes (server.py), which no
    encoder, store key, header or log line takes; each such byte becomes
    U+FFFD, and the address is scanned like any other."""
    if address.isascii():
        return address
    return address.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def build_engine(cfg: Config) -> Engine:
    """Raises ConfigError (naming the key) when the symbols table or a profile is unusable."""
    checks = all_checks(cfg)
    check_profile_names(cfg.scan, checks)
    return Engine(cfg.scan, checks)


def build_hook(cfg: Config, store: Store | None, resolver, hostname: str) -> EngineHook:
    authserv_id = cfg.scan.authserv_id or cfg.proxy.hostname or hostname
    return EngineHook(cfg, build_engine(cfg), store, resolver, authserv_id)
