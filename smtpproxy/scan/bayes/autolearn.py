"""Autolearn: learn from the scan result, spam at reject-level scores and ham at clearly negative ones.

Off by default (``scan.bayes.autolearn``). Rules, as SpamAssassin's and
rspamd's autolearn have them:

- the score that decides is the message's score *without* the Bayes
  symbols, so the classifier never teaches itself what it already thinks;
- spam at or above ``autolearn_spam_score``, ham at or below
  ``autolearn_ham_score``; nothing in between;
- only inbound mail (the outbound profile carries our own users' mail);
- a message the engine forced to an action (GTUBE, a map) is not learned;
- class balance: a class is not autolearned while it already has more than
  ``autolearn_max_ratio`` times the learned messages of the other class
  (the other class counting as at least ``min_learned``, so a fresh store
  can start), which keeps one class from drowning the other;
- learning the same message again does nothing (learned-message ids).

A store in trouble skips autolearn (logged); the message is unaffected.
"""

from __future__ import annotations

import logging

from smtpproxy.common.config import BayesConfig
from smtpproxy.common.store import Store, StoreError
from smtpproxy.scan.bayes.storage import HAM, SPAM, BayesStore, message_id
from smtpproxy.scan.bayes.tokenizer import tokenize
from smtpproxy.scan.engine import ScanResult
from smtpproxy.scan.message import Message

logger = logging.getLogger("smtpproxy.scan")


def autolearn_class(cfg: BayesConfig, result: ScanResult, profile: str) -> str | None:
    """The class this result would be autolearned as, before the balance guard."""
    if not cfg.autolearn or profile != "inbound" or result.forced_by is not None:
        return None
    score = result.score - sum(s.score for name, s in result.symbols.items() if name.startswith("BAYES_"))
    if score >= cfg.autolearn_spam_score:
        return SPAM
    if score <= cfg.autolearn_ham_score:
        return HAM
    return None


async def autolearn(store: Store, cfg: BayesConfig, message: Message, result: ScanResult,
                    profile: str) -> str | None:
    """Learn the message when the rules say so; the outcome for the log, or None."""
    cls = autolearn_class(cfg, result, profile)
    if cls is None:
        return None
    bayes = BayesStore(store, cfg.token_ttl_s)
    try:
        counts = await bayes.counts()
        mine, other = (counts.nspam, counts.nham) if cls == SPAM else (counts.nham, counts.nspam)
        if mine + 1 > cfg.autolearn_max_ratio * max(other, cfg.min_learned):
            return f"{cls} skipped (class balance {mine}:{other})"
        outcome = await bayes.learn(message_id(message.raw), tokenize(message, cfg.max_tokens), cls)
    except StoreError as exc:
        logger.warning("bayes autolearn skipped, store unusable: %s", exc)
        return None
    return f"{cls} {outcome}"
