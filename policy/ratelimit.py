"""Rate limits: GCRA buckets keyed on request attributes.

The algorithm (GCRA, the "virtual scheduling" form of a leaky bucket), for
a limit of N per period P:

- the emission interval is T = P / N; each bucket keeps one number, its
  theoretical arrival time TAT (when it would be empty again);
- a request of cost c (1 per recipient at RCPT, 1 per message at
  END-OF-MESSAGE) is allowed when max(TAT, now) + c*T - now <= P; then
  TAT becomes max(TAT, now) + c*T; a refused request changes nothing;
- burst semantics: an idle bucket admits N at once, then one every T. So
  ``20/1m`` allows 20 recipients back to back, then one every 3 s; the
  bucket is full again after a minute of silence. Over any window of length
  P at most 2N-1 pass (a full burst at the end of one period plus the
  refill), and over a long run exactly N per P: the guarantee is the rate,
  not a calendar window;
- several limits on one rule (``20/1m, 300/1h, 1000/1d``) are checked
  together and all charged only if all allow; the reply's retry hint is the
  longest wait among the limits that refused.

Each check is one store call (one Lua script on Redis, one savepoint in a
group-committed transaction on SQLite), so it is exact when many Postfix
processes and several hosts ask at once.

Overrides map (``overrides_map``): ``KEY LIMIT[, LIMIT...]`` or ``KEY none``
per line, KEY being the rule's key value (``alice@example.org`` or, for a
multi-part key, the parts joined with ``|``).
"""

from __future__ import annotations

import hashlib
import logging
import os

from policy import replies
from policy.greylist import client_network
from smtpproxy.common.config import RateLimitRule, parse_rate
from smtpproxy.common.store import Store

logger = logging.getLogger(__name__)

NO_LIMIT = ()


def key_value(rule: RateLimitRule, req: dict[str, str], prefix_v4: int = 24,
              prefix_v6: int = 64) -> str | None:
    """The bucket's key value for this request; None when an attribute is absent."""
    parts = []
    for name in rule.key:
        if name == "sender_domain":
            value = req.get("sender", "").rpartition("@")[2]
        elif name == "recipient_domain":
            value = req.get("recipient", "").rpartition("@")[2]
        elif name == "client_network":
            address = req.get("client_address", "")
            value = client_network(address, prefix_v4, prefix_v6) if address else ""
        else:
            value = req.get(name, "")
        if not value:
            return None
        parts.append(value.lower())
    return "|".join(parts)


def bucket_key(store: Store, rule_name: str, value: str) -> str:
    digest = hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return store.key(f"rl:{rule_name}:{digest}")


class Overrides:
    """A map file of per-key limits, re-read when it changes (refresh in an executor)."""

    def __init__(self, path: str):
        self.path = path
        self.table: dict[str, tuple[tuple[int, float], ...]] = {}
        self._stamp: tuple | None = None
        self._unreadable_logged = False

    def refresh(self) -> None:
        if not self.path:
            return
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            if stamp == self._stamp:
                return
            with open(self.path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError as exc:
            if not self._unreadable_logged:
                logger.warning("overrides map %s unreadable (%s); keeping %d keys",
                               self.path, exc.strerror, len(self.table))
                self._unreadable_logged = True
            return
        self._unreadable_logged = False
        table = {}
        for number, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            key, _, rest = line.partition(" ")
            rest = rest.strip()
            try:
                if rest.lower() == "none":
                    table[key.lower()] = NO_LIMIT
                else:
                    table[key.lower()] = tuple(parse_rate(p.strip()) for p in rest.split(",") if p.strip())
            except Exception as exc:
                logger.warning("%s:%d: ignored: %s", self.path, number, exc)
        self.table = table
        self._stamp = stamp
        logger.info("overrides map %s loaded (%d keys)", self.path, len(table))


class Rule:
    def __init__(self, cfg: RateLimitRule, prefix_v4: int, prefix_v6: int):
        self.cfg = cfg
        self.limits = cfg.parsed_limits
        self.state = cfg.protocol_state
        self.contexts = frozenset(cfg.policy_contexts)
        self.exempt = frozenset(v.lower() for v in cfg.exempt)
        self.overrides = Overrides(cfg.overrides_map)
        self.prefix_v4, self.prefix_v6 = prefix_v4, prefix_v6

    def applies(self, req: dict[str, str]) -> bool:
        return (req.get("protocol_state", "").upper() == self.state
                and req.get("policy_context", "") in self.contexts)


class RateLimiter:
    def __init__(self, rules: tuple[RateLimitRule, ...], prefix_v4: int = 24, prefix_v6: int = 64):
        self.rules = [Rule(r, prefix_v4, prefix_v6) for r in rules]

    def refresh(self) -> None:
        for rule in self.rules:
            rule.overrides.refresh()

    async def check(self, store: Store, req: dict[str, str],
                    now: float) -> tuple[str | None, str, str]:
        """(action or None, log note, the refusing rule's name) after every rule that applies."""
        for rule in self.rules:
            if not rule.applies(req):
                continue
            value = key_value(rule.cfg, req, rule.prefix_v4, rule.prefix_v6)
            if value is None or value in rule.exempt:
                continue
            limits = rule.overrides.table.get(value, rule.limits)
            if not limits:
                continue
            result = await store.rate_limit(bucket_key(store, rule.cfg.name, value), limits, 1, now)
            if not result.allowed:
                count, period = limits[result.limit_index]
                note = f"ratelimit={rule.cfg.name} key={value} limit={count}/{period:g}s"
                return replies.rate_exceeded(rule.cfg.action, result.retry_after_s), note, rule.cfg.name
        return None, "", ""
