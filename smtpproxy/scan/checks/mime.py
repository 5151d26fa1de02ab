"""MIME heuristics: HTML-only mail, alternatives that disagree, dangerous attachments, defects."""

from __future__ import annotations

import re
from collections import Counter
from typing import ClassVar

from smtpproxy.scan.checks.base import CheckContext, Hit

# Types a mail client may run, or that carry macros.
DANGEROUS_EXTENSIONS = frozenset("""
    exe com scr pif bat cmd vbs vbe js jse wsf wsh hta msi msp cpl jar ps1 psm1 reg lnk
    iso img vhd vhdx docm xlsm pptm dotm xlam ppam chm scf url appx appxbundle
""".split())
DOCUMENT_EXTENSIONS = frozenset("pdf doc docx xls xlsx ppt pptx txt jpg jpeg png gif zip rtf".split())
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
        "MIME_HTML_ONLY", "R_PARTS_DIFFER", "MIME_BAD", "MIME_BAD_ATTACHMENT",
        "MIME_DOUBLE_BAD_EXTENSION",
    )
    after: ClassVar[tuple[str, ...]] = ()
    # Runs in the engine's task until it has to wait (checks/base.py).
    inline: ClassVar[bool] = True

    async def run(self, ctx: CheckContext) -> list[Hit]:
        msg = ctx.message
        hits: list[Hit] = []
        if msg.html_parts and not msg.text_parts:
            hits.append(Hit("MIME_HTML_ONLY"))
        elif msg.html_parts and msg.text_parts:
            ratio = _similarity(msg.text_parts[0], msg.html_texts[0])
            if ratio < PARTS_DIFFER_RATIO:
                hits.append(Hit("R_PARTS_DIFFER", (f"{100 * (1 - ratio):.0f}%",)))
        if msg.defects:
            hits.append(Hit("MIME_BAD", tuple(sorted(set(msg.defects)))[:5]))
        bad, double = [], []
        for part in msg.attachments:
            name = (part.filename or "").strip().lower().rstrip(".")
            parts = name.rsplit(".", 2)
            if len(parts) < 2:
                continue
            if parts[-1] in DANGEROUS_EXTENSIONS:
                bad.append(name)
                if len(parts) == 3 and parts[-2] in DOCUMENT_EXTENSIONS:
                    double.append(name)
        if bad:
            hits.append(Hit("MIME_BAD_ATTACHMENT", tuple(bad[:5])))
        if double:
            hits.append(Hit("MIME_DOUBLE_BAD_EXTENSION", tuple(double[:5])))
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
