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


@dataclass(frozen=True)
class Classification:
    probability: float
    # Telling tokens used; the strongest few with f(w) for the evidence.
    used: int
    clues: tuple[tuple[str, float], ...] = ()


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
             n_clues: int = 5) -> Classification:
    """``counts``: token -> (spam, ham) for the message's tokens (absent: unknown)."""
    scored = []
    for token, (spam, ham) in counts.items():
        if spam <= 0 and ham <= 0:
            continue
        f = token_probability(spam, ham, nspam, nham)
        if abs(f - 0.5) >= MIN_PROB_STRENGTH:
            scored.append((abs(f - 0.5), token, f))
    scored.sort(reverse=True)
    scored = scored[:MAX_DISCRIMINATORS]
    probability = combine([f for _, _, f in scored])
    return Classification(probability, len(scored),
                          tuple((token, f) for _, token, f in scored[:n_clues]))
