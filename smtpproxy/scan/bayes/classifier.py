"""Token counts to a spam probability: Robinson's f(w) and Fisher's chi-square combining.

The method of SpamBayes and SpamAssassin's Bayes (Gary Robinson, "A
statistical approach to the spam problem", 2003):

1. Per token, with s and h the spam and ham messages it was learned in and
   S, H the learned messages of each class:
       p(w) = (s/S) / (s/S + h/H)
   shrunk towards the unknown-word probability x by the evidence n = s + h:
       f(w) = (STRENGTH * x + n * p(w)) / (STRENGTH + n)
2. Only telling tokens count: |f(w) - 0.5| >= MIN_PROB_STRENGTH, at most
   MAX_DISCRIMINATORS of them, the most extreme first.
3. Fisher's method, both ways: with n telling tokens,
       H = C^-1(-2 sum ln f(w), 2n)      (evidence of ham when small)
       S = C^-1(-2 sum ln (1 - f(w)), 2n)
   where C^-1 is the chi-square survival function; the indicator is
       I = (1 + H - S) / 2
   near 1 for spam, near 0 for ham, near 0.5 when the evidence disagrees
   or is weak (which is why the thresholds sit well away from 0.5).

Pure functions; the counts come from storage.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

UNKNOWN_PROB = 0.5          # x: a token never seen
UNKNOWN_STRENGTH = 0.45     # s: how much x weighs against the evidence (SpamBayes' default)
MIN_PROB_STRENGTH = 0.1     # ignore tokens with f(w) within 0.4..0.6
MAX_DISCRIMINATORS = 150    # the most extreme tokens used
# A token counts as known to the training once this many learned messages
# carried it: one sighting is as likely chance as a pattern.
KNOWN_MIN_MESSAGES = 2


@dataclass(frozen=True)
class Classification:
    probability: float
    # Telling tokens used; the strongest few with f(w) for the evidence.
    used: int
    clues: tuple[tuple[str, float], ...] = ()
    # The message's distinct tokens, and how many of them the training knows
    # (learned in at least KNOWN_MIN_MESSAGES messages): how familiar the
    # message is, whatever the verdict.
    tokens: int = 0
    known: int = 0

    @property
    def coverage(self) -> float:
        """The share of the message's distinct tokens the training knows, 0..1."""
        return self.known / self.tokens if self.tokens else 0.0


def token_probability(spam: int, ham: int, nspam: int, nham: int) -> float:
    """Robinson's f(w) for a token learned in ``spam`` and ``ham`` messages."""
    spam = max(0, spam)
    ham = max(0, ham)
    n = spam + ham
    if n == 0 or nspam <= 0 or nham <= 0:
        return UNKNOWN_PROB
    spam_ratio = min(spam, nspam) / nspam
    ham_ratio = min(ham, nham) / nham
    p = spam_ratio / (spam_ratio + ham_ratio)
    return (UNKNOWN_STRENGTH * UNKNOWN_PROB + n * p) / (UNKNOWN_STRENGTH + n)


def chi2q(x2: float, v: int) -> float:
    """P(chi-square with v (even) degrees of freedom >= x2): the survival function."""
    m = x2 / 2.0
    term = math.exp(-m)
    total = term
    for i in range(1, v // 2):
        term *= m / i
        total += term
    return min(total, 1.0)


def combine(probs: list[float]) -> float:
    """Fisher-Robinson chi-square combining of token probabilities; 0.5 for none."""
    if not probs:
        return 0.5
    n = len(probs)
    ln_ham = sum(math.log(max(p, 1e-200)) for p in probs)
    ln_spam = sum(math.log(max(1.0 - p, 1e-200)) for p in probs)
    ham = chi2q(-2.0 * ln_ham, 2 * n)
    spam = chi2q(-2.0 * ln_spam, 2 * n)
    return (1.0 + ham - spam) / 2.0


def classify(counts: dict[str, tuple[int, int]], nspam: int, nham: int,
             n_clues: int = 5, n_tokens: int | None = None) -> Classification:
    """``counts``: token -> (spam, ham) for the message's tokens (absent: unknown);
    ``n_tokens``: the message's distinct tokens, known or not (default: those in ``counts``)."""
    scored = []
    known = 0
    for token, (spam, ham) in counts.items():
        if spam <= 0 and ham <= 0:
            continue
        if max(0, spam) + max(0, ham) >= KNOWN_MIN_MESSAGES:
            known += 1
        f = token_probability(spam, ham, nspam, nham)
        if abs(f - 0.5) >= MIN_PROB_STRENGTH:
            scored.append((abs(f - 0.5), token, f))
    scored.sort(reverse=True)
    scored = scored[:MAX_DISCRIMINATORS]
    probability = combine([f for _, _, f in scored])
    return Classification(probability, len(scored),
                          tuple((token, f) for _, token, f in scored[:n_clues]),
                          max(n_tokens if n_tokens is not None else len(counts), known), known)


def familiarity(result: Classification, familiar_coverage: float, unfamiliar_coverage: float,
                familiar_tokens: int) -> float:
    """How far a verdict on this message can be trusted from what the training knows of it, 0..1.

    The chi-square verdict is drawn only from known tokens and says nothing
    of the rest: on mail unlike the training (another organisation, language
    or kind of mail) the few tokens it knows are the generic ones, and they
    still add up to an extreme probability. So the verdict counts in
    proportion to the share of the message the training knows (0 at or below
    ``unfamiliar_coverage``, 1 at or above ``familiar_coverage``, linear
    between) and, below ``familiar_tokens`` known tokens, to their number.
    """
    span = familiar_coverage - unfamiliar_coverage
    share = min(1.0, max(0.0, (result.coverage - unfamiliar_coverage) / span)) if span > 0 else 1.0
    return share * min(1.0, result.known / familiar_tokens)
