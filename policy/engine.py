"""The decision for one request: which checks run, in which order, what wins.

Per request: the greylist check runs when its ``protocol_states`` and
``policy_contexts`` match; a deferral ends the decision there (a deferred
attempt is not charged to any rate limit, so retries do not eat the
budget). Then every rate-limit rule bound to this stage and context. The
first refusal wins; otherwise the greylist's PREPEND (after a delay), or DUNNO
so that Postfix's other restrictions decide.

Store errors and bugs propagate; the server turns them into the configured
default action.
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
from smtpproxy.common.store import Store

logger = logging.getLogger("policy")


class Policy:
    def __init__(self, cfg: Config, store: Store, hostname: str, stats: PolicyStats | None = None):
        pc = cfg.policy
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
            logger.warning("unknown request type %s answered DUNNO", quote(req.get("request", "")))
            return replies.DUNNO
        now = time.time()
        action = None
        note = ""
        if self.greylister.applies(req):
            action, note = await self.greylister.check(self.store, req, now)
            self.stats.greylist.inc(note)
            if action is not None and action.startswith("DEFER"):
                self._log(req, action, "greylist=" + note)
                return action
        refusal, rl_note, rule = await self.limiter.check(self.store, req, now)
        if refusal is not None:
            self.stats.rate_limited.inc(rule)
            self._log(req, refusal, rl_note)
            return refusal
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
            quote(action.split(" ", 1)[0]), req.get("protocol_state", ""),
            quote(req.get("client_name", "unknown")), req.get("client_address", ""),
            quote(req.get("sender", "")), quote(req.get("recipient", "")),
            quote(req.get("sasl_username", "")), note,
        )
