"""Token counts to a spam probability: Robinson's f(w) and Fisher's chi-square combining.

The method of SpamBayes and SpamAssassin's Bayes (Gary Robinson, "A
statistical approach to the spam problem", 2003):

1. Per token, with s and h the spam and ham messages it was learned in and
   S, H the learned messages of each class:
       p(w) = (s/S) / (s/S + h/H)
   shrunk towards the unknown-word probability x by the evidence n = s + h:
       f(w) = (STRENGTH * x + n * p(w)) / (STRENGTH + n)
2. Only telling tokens count: |f(w) - 0.5| >= MIN_PROB_STRENGTH; every one
   of them (as rspamd does: the message gives at most ``max_tokens``).
3. Fisher's method, both ways: with n telling tokens,
       H = C^-1(-2 sum ln f(w), 2n)      (evidence of ham when small)
       S = C^-1(-2 sum ln (1 - f(w)), 2n)
   where C^-1 is the chi-square survival function; the indicator is
       I = (1 + H - S) / 2
   near 1 for spam, near 0 for ham, near 0.5 when the evidence disagrees
   or is weak (which is why the thresholds sit well away from 0.5).

Beside the verdict, what the training knows of the message's content (the
tokens of its form, tokenizer.is_form, are known for any mail): the share
of its content tokens learned before, and its strong clues (tokens learned
in several messages that point 9 to 1 one way). ``familiarity`` turns them
into the weight the verdict deserves.

Pure functions; the counts come from storage.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from smtpproxy.scan.bayes.tokenizer import is_form

UNKNOWN_PROB = 0.5          # x: a token never seen
# s: how much x weighs against the evidence. Robinson's 1: a token seen in
# one message of a class stays a weak clue (0.75) until others confirm it.
# SpamBayes' 0.45 was tuned with at most 150 tokens counted; with every
# telling token counted, single sightings (one-off list and relay words of
# the ham, say) would otherwise outvote what the training knows well.
UNKNOWN_STRENGTH = 1.0
MIN_PROB_STRENGTH = 0.1     # ignore tokens with f(w) within 0.4..0.6
# A token counts as known to the training once this many learned messages
# carried it: one sighting is as likely chance as a pattern.
KNOWN_MIN_MESSAGES = 2
# A strong clue: a known token whose f(w) is this far one way (9 to 1).
# With UNKNOWN_STRENGTH 1 that takes at least 4 messages of one class.
STRONG_CLUE = 0.9


@dataclass(frozen=True)
class Classification:
    probability: float
    # Telling tokens used; the strongest few with f(w) for the evidence.
    used: int
    clues: tuple[tuple[str, float], ...] = ()
    # The message's distinct content tokens (not its form: tokenizer.is_form),
    # and how many of them the training knows (learned in at least
    # KNOWN_MIN_MESSAGES messages): how familiar the message is, whatever
    # the verdict.
    tokens: int = 0
    known: int = 0
    # Known content tokens that are strong clues (STRONG_CLUE) of spam, of ham.
    spam_clues: int = 0
    ham_clues: int = 0

    @property
    def coverage(self) -> float:
        """The share of the message's distinct content tokens the training knows, 0..1."""
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
    """P(chi-square with v (even) degrees of freedom >= x2): the survival function.

    The sum of the Poisson terms e^-m m^i / i!, i < v/2, taken in logarithms:
    e^-m alone underflows to 0 once m passes about 745 (a few hundred tokens),
    which would read as "certainly not" where the answer is near 1."""
    m = x2 / 2.0
    if m <= 0.0:
        return 1.0
    log_m = math.log(m)
    log_term = -m
    logs = [log_term]
    for i in range(1, v // 2):
        log_term += log_m - math.log(i)
        logs.append(log_term)
    top = max(logs)
    return min(1.0, math.exp(top) * math.fsum(math.exp(t - top) for t in logs))


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
    ``n_tokens``: the message's distinct content tokens, known or not (default:
    the content tokens in ``counts``)."""
    scored = []
    known = content = spam_clues = ham_clues = 0
    for token, (spam, ham) in counts.items():
        if spam <= 0 and ham <= 0:
            continue
        f = token_probability(spam, ham, nspam, nham)
        if abs(f - 0.5) >= MIN_PROB_STRENGTH:
            scored.append((abs(f - 0.5), token, f))
        if is_form(token):
            continue
        content += 1
        if max(0, spam) + max(0, ham) >= KNOWN_MIN_MESSAGES:
            known += 1
            spam_clues += f >= STRONG_CLUE
            ham_clues += f <= 1.0 - STRONG_CLUE
    scored.sort(reverse=True)
    probability = combine([f for _, _, f in scored])
    return Classification(probability, len(scored),
                          tuple((token, f) for _, token, f in scored[:n_clues]),
                          max(n_tokens if n_tokens is not None else content, known), known,
                          spam_clues, ham_clues)


def familiarity(result: Classification, familiar_coverage: float, unfamiliar_coverage: float,
                familiar_tokens: int, familiar_clues: int) -> float:
    """How far a verdict on this message can be trusted from what the training knows of it, 0..1.

    The chi-square verdict is drawn only from known tokens and says nothing
    of the rest: on mail unlike the training (another organisation, language
    or kind of mail) the few tokens it knows are the generic ones (its form,
    common words), and they still add up to an extreme probability. So the
    verdict counts in proportion to the share of the message's content the
    training knows (0 at or below ``unfamiliar_coverage``, 1 at or above
    ``familiar_coverage``, linear between) and, below ``familiar_tokens``
    known tokens, to their number.

    Or, if more, in proportion to its strong clues for the verdict's class,
    in full from ``familiar_clues`` of them: spam padded with one-off words,
    or in a language the ham never used, has a low share known, yet what is
    known of it is known as spam, well.
    """
    span = familiar_coverage - unfamiliar_coverage
    share = min(1.0, max(0.0, (result.coverage - unfamiliar_coverage) / span)) if span > 0 else 1.0
    share *= min(1.0, result.known / familiar_tokens)
    clues = result.spam_clues if result.probability >= 0.5 else result.ham_clues
    return max(share, min(1.0, clues / familiar_clues))
