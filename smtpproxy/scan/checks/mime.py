"""MIME heuristics: HTML-only mail, alternatives that disagree, defects.

Attachment names, archives and macros are checks/attachments.py."""

from __future__ import annotations

import re
from collections import Counter
from typing import ClassVar

from smtpproxy.scan.checks.base import CheckContext, Hit

WORD_RE = re.compile(r"\w+", re.UNICODE)
# Below this similarity (0..1) the text and HTML alternatives "differ".
PARTS_DIFFER_RATIO = 0.5
MAX_COMPARED_WORDS = 2000
# Words are looked for in this much text first (the whole text only when it
# holds fewer than MAX_COMPARED_WORDS of them).
_WORDS_WINDOW_CHARS = 16 * MAX_COMPARED_WORDS


class MimeCheck:
    name: ClassVar[str] = "mime"
    symbols: ClassVar[tuple[str, ...]] = (
        "MIME_HTML_ONLY", "R_PARTS_DIFFER", "MIME_BAD",
    )
    after: ClassVar[tuple[str, ...]] = ()
    # Runs in the engine's task until it has to wait (checks/base.py).
    inline: ClassVar[bool] = True

    async def run(self, ctx: CheckContext) -> list[Hit]:
        msg = ctx.message
        hits: list[Hit] = []
        # The message's own body: an attached message's parts are not its alternatives.
        texts, htmls, calendars = msg.own_body() if msg.html_parts else ([], [], [])
        # An invitation's text/calendar is the plain alternative of its HTML.
        if htmls and not texts and not calendars:
            hits.append(Hit("MIME_HTML_ONLY"))
        elif htmls and texts:
            ratio = _similarity(texts[0], htmls[0])
            if ratio < PARTS_DIFFER_RATIO:
                hits.append(Hit("R_PARTS_DIFFER", (f"{100 * (1 - ratio):.0f}%",)))
        if msg.defects:
            hits.append(Hit("MIME_BAD", tuple(sorted(set(msg.defects)))[:5]))
        return hits


def _words(text: str) -> list[str]:
    """The first MAX_COMPARED_WORDS words of ``text``, lower-cased."""
    words = WORD_RE.findall(text[:_WORDS_WINDOW_CHARS].lower())
    # More words than needed: the last one may be cut by the window, the first ones are whole.
    if len(words) <= MAX_COMPARED_WORDS and len(text) > _WORDS_WINDOW_CHARS:
        words = WORD_RE.findall(text.lower())
    return words[:MAX_COMPARED_WORDS]


def _similarity(a: str, b: str) -> float:
    """difflib's quick_ratio of the two word lists: 2 * (words in common, as
    multisets) / (words in both), computed with Counters."""
    wa, wb = _words(a), _words(b)
    if not wa and not wb:
        return 1.0
    common = sum((Counter(wa) & Counter(wb)).values())
    return 2.0 * common / (len(wa) + len(wb))
