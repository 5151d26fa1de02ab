"""Bayes: BAYES_SPAM / BAYES_HAM from the classifier trained with ``smtpproxy learn``.

The message's tokens (scan/bayes/tokenizer.py) are looked up in the store
in one round trip and combined with Robinson-Fisher chi-square
(scan/bayes/classifier.py). Silent until ``scan.bayes.min_learned``
messages of each class have been learned, and for a message with fewer
than ``min_tokens`` telling tokens. At or above ``spam_threshold`` the
check emits BAYES_SPAM, at or below ``ham_threshold`` BAYES_HAM, with the
probability, the coverage, the known tokens and the strong clues in the
options. The hit's weight, so the symbol's score, is the confidence times
the familiarity (classifier.familiarity: how much of the message's
content the training knows, or how many strong clues of the verdict's
class it carries); a verdict on a message it does not know at all is BAYES_UNFAMILIAR, no score.

With ``per_user`` set, a message whose recipients all share one user's
(or domain's) classifier is classified by that one once it has learned
``min_learned`` of each class ("user=<owner>" in the options), otherwise by
the site's: a new user starts with the site's judgement. A classifier found
short of ``min_learned`` is not looked up again for NOT_READY_RECHECK_S.

No store (``smtpproxy scan`` without one), or a store in trouble: no
classification (BAYES_UNAVAILABLE with the reason for the latter); the
message is scanned as if Bayes were off.
"""

from __future__ import annotations

import logging
import time
from typing import ClassVar

from smtpproxy.common.config import BayesConfig, Config
from smtpproxy.common.store import StoreError
from smtpproxy.scan.bayes.classifier import familiarity
from smtpproxy.scan.bayes.storage import BayesStore, Counts, recipients_owner
from smtpproxy.scan.bayes.tokenizer import tokenize
from smtpproxy.scan.checks.base import CheckContext, Hit

logger = logging.getLogger("smtpproxy.scan")


# A classifier found short of min_learned is not asked again for this long:
# until it is trained, every message would otherwise pay the tokenizing and
# a store round trip for nothing (a fresh install, a new user). Learning
# meanwhile shows within this delay.
NOT_READY_RECHECK_S = 30.0
# Owners remembered as not ready, at most (then the memory starts afresh).
MAX_REMEMBERED = 10_000
_clock = time.monotonic


class BayesCheck:
    name: ClassVar[str] = "bayes"
    symbols: ClassVar[tuple[str, ...]] = ("BAYES_SPAM", "BAYES_HAM", "BAYES_UNFAMILIAR", "BAYES_UNAVAILABLE")
    after: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: Config | None = None):
        self.cfg: BayesConfig = cfg.scan.bayes if cfg is not None else BayesConfig()
        self._not_ready_until: dict[str, float] = {}  # owner ("" the site) -> monotonic time

    async def run(self, ctx: CheckContext) -> list[Hit]:
        cfg = self.cfg
        if not cfg.enabled or ctx.store is None:
            return []
        owner = recipients_owner(ctx.rcpt_tos, cfg.per_user)
        if owner and self._known_not_ready(owner):
            owner = ""
        if not owner and self._known_not_ready(""):
            return []
        tokens = tokenize(ctx.message, cfg.max_tokens)
        try:
            totals, result = await BayesStore(ctx.store, cfg.token_ttl_s, owner).classify(tokens)
            if owner and not self._ready(totals):
                self._remember_not_ready(owner)
                owner = ""
                if self._known_not_ready(""):
                    return []
                totals, result = await BayesStore(ctx.store, cfg.token_ttl_s).classify(tokens)
        except StoreError as exc:
            logger.warning("bayes: store unusable: %s", exc)
            return [Hit("BAYES_UNAVAILABLE", ("store",))]
        ctx.facts["bayes"] = {"probability": result.probability, "tokens": result.used,
                              "coverage": result.coverage, "known": result.known,
                              "nspam": totals.nspam, "nham": totals.nham, "owner": owner}
        if not self._ready(totals):
            self._remember_not_ready(owner)
            return []
        if result.used < cfg.min_tokens:
            return []
        if result.probability >= cfg.spam_threshold:
            symbol, confidence = "BAYES_SPAM", (result.probability - 0.5) * 2
        elif result.probability <= cfg.ham_threshold:
            symbol, confidence = "BAYES_HAM", (0.5 - result.probability) * 2
        else:
            return []
        familiar = familiarity(result, cfg.familiar_coverage, cfg.unfamiliar_coverage, cfg.familiar_tokens,
                                cfg.familiar_clues)
        options = (f"{result.probability:.3f}", f"tokens={result.used}",
                   f"coverage={result.coverage:.2f}", f"known={result.known}",
                   f"clues={result.spam_clues if symbol == 'BAYES_SPAM' else result.ham_clues}",
                   *((f"user={owner}",) if owner else ()))
        if familiar <= 0.0:
            # A verdict on mail the training does not know: shown, not scored.
            return [Hit("BAYES_UNFAMILIAR", (symbol, *options))]
        return [Hit(symbol, options, confidence * familiar)]

    def _ready(self, totals: Counts) -> bool:
        return min(totals.nspam, totals.nham) >= self.cfg.min_learned

    def _known_not_ready(self, owner: str) -> bool:
        until = self._not_ready_until.get(owner)
        return until is not None and _clock() < until

    def _remember_not_ready(self, owner: str) -> None:
        if len(self._not_ready_until) >= MAX_REMEMBERED:
            self._not_ready_until.clear()
        self._not_ready_until[owner] = _clock() + NOT_READY_RECHECK_S
