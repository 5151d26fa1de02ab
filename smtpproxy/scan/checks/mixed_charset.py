"""Words that mix Latin letters with look-alikes from other scripts (rspamd's chartable, R_MIXED_CHARSET).

"Рaypal" with a Cyrillic Р reads as PayPal to a person and as an unknown
word to a filter. Each short word (MAX_WORD_CHARS letters or fewer; long
words are left alone to spare real multi-script text) gets a badness: a
switch of script inside a word, between a Latin letter and one that can
pass for Latin (the Unicode confusables shipped in
smtpproxy/scan/data/latin_confusables.txt), adds 1 / (letters in the run
before it). rspamd counts only switches away from Latin, from the second
letter on, so "Yоur аccоunt" (Cyrillic о and а) weighs almost nothing
there; we count both directions from the first letter. A digit followed by a non-Latin letter adds 0.25; two or
more accented Latin letters add half a point each after the first (rspamd's
rate when the language allows diacritics; we detect no language, so we
always take that lenient rate). A part whose mean badness per word exceeds
THRESHOLD fires, weighted by it (capped at 1); the Subject counts too, its
weight capped at SUBJECT_MAX_WEIGHT as in rspamd.

Only words with a non-ASCII character are walked letter by letter, and at
most MAX_TEXT_CHARS of the message's text are read.
"""

from __future__ import annotations

import re
import unicodedata
from importlib import resources
from typing import ClassVar

from smtpproxy.scan.checks.base import CheckContext, Hit

THRESHOLD = 0.3
SUBJECT_MAX_WEIGHT = 0.25
MAX_WORD_CHARS = 10
MAX_WORD_BADNESS = 4.0
# Text read, in all parts of a message together.
MAX_TEXT_CHARS = 32 * 1024
WORD_RE = re.compile(r"\w+")

_START, _ALPHA, _DIGIT, _OTHER = range(4)


def _load_confusables() -> frozenset[int]:
    text = resources.files("smtpproxy.scan").joinpath("data/latin_confusables.txt").read_text("utf-8")
    return frozenset(int(token, 16) for line in text.splitlines() if not line.startswith("#")
                     for token in line.split())


LATIN_CONFUSABLES = _load_confusables()


def _latin(cp: int) -> bool:
    """Basic Latin up to the combining marks, and Latin Extended Additional: rspamd's "Latin"."""
    return cp < 0x370 or 0x1E00 <= cp <= 0x1EFF


def _accented(ch: str, cp: int) -> bool:
    """Latin-1 Supplement, Latin Extended A/B and Additional, or a combining mark."""
    return 0x80 <= cp < 0x250 or 0x300 <= cp < 0x370 or 0x1E00 <= cp <= 0x1EFF \
        or (cp >= 0x300 and unicodedata.category(ch) == "Mn")


def word_badness(word: str) -> float:
    """How much ``word`` looks disguised: rspamd's rspamd_chartable_process_word_utf, see the module doc."""
    if word.isascii() or len(word) > MAX_WORD_CHARS:
        return 0.0
    badness = 0.0
    state = previous = _START
    run_latin = False  # the script of the current run of letters
    run_length = 0  # letters in it; 0: no run yet (start, or after a digit or mark)
    last_cp = 0
    accented = 0
    for ch in word:
        cp = ord(ch)
        if _accented(ch, cp):
            accented += 1
        if ch.isalpha():
            latin = _latin(cp)
            if state == _DIGIT and not latin and previous != _START:
                badness += 0.25
            if run_length and latin != run_latin:
                # A switch of script counts when the non-Latin side could pass for Latin.
                if (cp if not latin else last_cp) in LATIN_CONFUSABLES:
                    badness += 1.0 / run_length
                run_length = 0
            if not run_length:
                run_latin = latin
            run_length += 1
            last_cp = cp
            previous, state = state, _ALPHA
        else:
            new_state = _DIGIT if ch.isdigit() else _OTHER
            if state != new_state:
                previous = state
            state, run_length = new_state, 0
    if accented > 1:
        badness += (accented - 1) / 2
    return min(badness, MAX_WORD_BADNESS)


def text_badness(text: str, extra_words: int = 0) -> float:
    """Mean badness per word of ``text`` (``extra_words`` added to the count, as rspamd does for the subject)."""
    words = WORD_RE.findall(text)
    if not words:
        return 0.0
    total = sum(word_badness(w) for w in words if not w.isascii())
    return total / (len(words) + extra_words)


class MixedCharsetCheck:
    name: ClassVar[str] = "mixed_charset"
    symbols: ClassVar[tuple[str, ...]] = ("R_MIXED_CHARSET",)
    after: ClassVar[tuple[str, ...]] = ()
    # Runs in the engine's task until it has to wait (checks/base.py).
    inline: ClassVar[bool] = True

    async def run(self, ctx: CheckContext) -> list[Hit]:
        msg = ctx.message
        worst, budget = 0.0, MAX_TEXT_CHARS
        for part in (*msg.text_parts, *msg.html_texts):
            if budget <= 0:
                break
            text = part[:budget]
            budget -= len(text)
            if not text.isascii():
                worst = max(worst, text_badness(text))
        if worst > THRESHOLD:
            return [Hit("R_MIXED_CHARSET", (f"{worst:.2f}",), min(worst, 1.0))]
        subject = msg.subject
        if subject and not subject.isascii():
            score = text_badness(subject[:MAX_TEXT_CHARS], extra_words=1)
            if score > THRESHOLD:
                return [Hit("R_MIXED_CHARSET", ("subject",), min(score, SUBJECT_MAX_WEIGHT))]
        return []
