"""The decision for one request: which checks run, in which order, what wins.

Per request: the greylist check runs when its ``protocol_states`` and
``policy_contexts`` match; a deferral ends the decision there (a deferred
attempt is not charged to any rate limit, so retries do not eat the
budget). Then every rate-limit rule bound to this stage and context. The
first refusal wins; otherwise the greylist's PREPEND (after a delay), or DUNNO
so that Postfix's other restrictions decide.

What the server turns into the configured default action: a failed store
call (raised as StoreFailure, naming the operation for the log and the
metrics), a request that cannot be decided (BadRequest: a ``client_address``
that is not UTF-8, which Postfix never sends), and bugs.

Other attributes may carry bytes that are not UTF-8 (Postfix passes 8-bit
envelope addresses through unless ``strict_smtputf8`` is set); the codec
keeps them as surrogates and they are decided like any other value (a stray
8-bit byte in MAIL FROM must not be a way around greylisting). Log lines
show them as ``\\xNN``: a handler that encodes to UTF-8 (syslog) cannot
write a surrogate.
"""

from __future__ import annotations

import logging
import time

from policy import replies
from policy.greylist import Greylister
from policy.ratelimit import RateLimiter
from policy.stats import PolicyStats
from policy.whitelist import Whitelist
from smtpproxy.common.config import Config
from smtpproxy.common.log import quote
from smtpproxy.common.store import Store, StoreError

logger = logging.getLogger("policy")


class StoreFailure(StoreError):
    """A store call of one decision failed; ``operation`` says which (greylist, rate_limit)."""

    def __init__(self, operation: str, error: StoreError):
        super().__init__(f"{operation}: {error}")
        self.operation = operation


class BadRequest(ValueError):
    """A request that cannot be decided; the message says why, ready for the log."""


def printable(text: str) -> str:
    """``text`` with the bytes that were not UTF-8 (surrogates, see codec.py) as ``\\xNN``."""
    if text.isascii():
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _utf8(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Policy:
    def __init__(self, cfg: Config, store: Store, hostname: str, stats: PolicyStats | None = None,
                 record=None):
        pc = cfg.policy
        # record(req, decision): what is decided beyond a plain DUNNO, for the
        # proxy's history (policy/decisions.py); never blocks, never raises.
        self.record = record or (lambda req, decision: None)
        self.cfg = cfg
        self.store = store
        # Counted even when nobody reads them (tests, the admin CLI): no None checks per request.
        self.stats = stats or PolicyStats(lambda: 0, lambda: 0)
        self.whitelist = Whitelist(
            pc.greylist.whitelist_client_maps, pc.greylist.whitelist_sender_maps,
            pc.greylist.whitelist_recipient_maps,
        )
        self.greylister = Greylister(pc.greylist, self.whitelist, hostname)
        self.limiter = RateLimiter(
            pc.rate_limits, pc.greylist.client_prefix_v4, pc.greylist.client_prefix_v6
        )

    def refresh_maps(self) -> None:
        """Re-read changed map files. Blocking: call from an executor."""
        self.whitelist.refresh()
        self.limiter.refresh()

    async def decide(self, req: dict[str, str]) -> str:
        if req.get("request") != "smtpd_access_policy":
            logger.warning("unknown request type %s answered DUNNO",
                           quote(printable(req.get("request", ""))))
            return replies.DUNNO
        address = req.get("client_address", "")
        if not _utf8(address):
            raise BadRequest(f"client_address {quote(printable(address))} is not UTF-8, "
                             "so not an address")
        now = time.time()
        action = None
        note = ""
        decision: dict = {}
        if self.greylister.applies(req):
            try:
                action, note, decision = await self.greylister.decide(self.store, req, now)
            except StoreError as exc:
                raise StoreFailure("greylist", exc) from exc
            self.stats.greylist.inc(note)
            if action is not None and action.startswith("DEFER"):
                self.record(req, {"t": round(now, 3), **decision})
                self._log(req, action, "greylist=" + note)
                return action
        try:
            refusal, rl_note, rule = await self.limiter.check(self.store, req, now)
        except StoreError as exc:
            raise StoreFailure("rate_limit", exc) from exc
        if refusal is not None:
            self.stats.rate_limited.inc(rule)
            self.record(req, {"t": round(now, 3), **decision, "ratelimit": rule,
                              "action": refusal.split(" ", 1)[0]})
            self._log(req, refusal, rl_note)
            return refusal
        if decision:
            self.record(req, {"t": round(now, 3), **decision})
        if action is not None:
            self._log(req, action, "greylist=" + note)
            return action
        if logger.isEnabledFor(logging.DEBUG):
            self._log(req, replies.DUNNO, "greylist=" + note if note else "", logging.DEBUG)
        return replies.DUNNO

    @staticmethod
    def _log(req: dict[str, str], action: str, note: str, level: int = logging.INFO) -> None:
        if not logger.isEnabledFor(level):
            return
        logger.log(
            level, "action=%s state=%s client=%s[%s] sender=%s recipient=%s sasl=%s %s",
            quote(action.split(" ", 1)[0]), printable(req.get("protocol_state", "")),
            quote(printable(req.get("client_name", "unknown"))),
            printable(req.get("client_address", "")),
            quote(printable(req.get("sender", ""))), quote(printable(req.get("recipient", ""))),
            quote(printable(req.get("sasl_username", ""))), printable(note),
        )
