"""HTML that hides its text or shows pictures instead of words (rspamd's rules/html.lua).

Text a reader cannot see is written for filters: ZERO_FONT (blocks with a
zero font size), MANY_INVISIBLE_PARTS (hidden or unreadable blocks),
R_WHITE_ON_WHITE (text in the colour of its background, by its share of
the message's text). Pictures instead of text: HTML_SHORT_LINK_IMG_1/2/3
(a short part with a linked picture the message carries itself),
R_EMPTY_IMAGE (almost no text and a large picture), R_SUSPICIOUS_IMAGES
(linked pictures outweigh the words). Weights follow rspamd's rates, so a
newsletter's one hidden preheader weighs little.
"""

from __future__ import annotations

from typing import ClassVar

from smtpproxy.scan.checks.base import CheckContext, Hit
from smtpproxy.scan.html_doc import HtmlDoc, html_docs

# Weight of MANY_INVISIBLE_PARTS by the number of hidden blocks (1..10), and of ZERO_FONT (1..5).
INVISIBLE_RATES = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0)
ZERO_FONT_RATES = (0.1, 0.2, 0.2, 0.3, 0.5)
# More zero-size blocks than this weigh fully.
ZERO_FONT_FULL = 10
# R_WHITE_ON_WHITE: share of the text in low-contrast blocks above which it fires.
WHITE_ON_WHITE_MIN_SHARE = 0.1
# (symbol, shortest, longest) text of the part for a linked embedded picture.
SHORT_LINK_IMG = (("HTML_SHORT_LINK_IMG_1", 0, 1024), ("HTML_SHORT_LINK_IMG_2", 1024, 1536),
                  ("HTML_SHORT_LINK_IMG_3", 1536, 2048))
# width + height of a picture large enough to matter (unknown sizes count as 0).
LINK_IMG_MIN_DIM = 210
EMPTY_IMAGE_MIN_DIM = 400
EMPTY_IMAGE_MAX_TEXT = 50
# A linked picture of this size (width + height) stands for dim/100 words.
SUSPICIOUS_IMAGE_DIM = (100, 3000)


class HtmlTextCheck:
    name: ClassVar[str] = "html_text"
    symbols: ClassVar[tuple[str, ...]] = (
        "ZERO_FONT", "MANY_INVISIBLE_PARTS", "R_WHITE_ON_WHITE", "HTML_SHORT_LINK_IMG_1",
        "HTML_SHORT_LINK_IMG_2", "HTML_SHORT_LINK_IMG_3", "R_EMPTY_IMAGE", "R_SUSPICIOUS_IMAGES",
    )
    after: ClassVar[tuple[str, ...]] = ()
    # Runs in the engine's task until it has to wait (checks/base.py).
    inline: ClassVar[bool] = True

    async def run(self, ctx: CheckContext) -> list[Hit]:
        if not ctx.message.html_parts:
            return []
        docs = html_docs(ctx)
        hits = _hidden_text(docs, sum(len(t) for t in ctx.message.text_parts))
        hits.extend(_pictures(docs))
        return hits


def _hidden_text(docs: list[HtmlDoc], plain_len: int) -> list[Hit]:
    hits: list[Hit] = []
    invisible = sum(d.invisible_blocks for d in docs)
    zero = sum(d.zero_size_blocks for d in docs)
    hidden_len = sum(d.transparent_len for d in docs)
    total_len = plain_len + sum(d.text_len for d in docs)
    if hidden_len and total_len:
        share = hidden_len / total_len
        if share > WHITE_ON_WHITE_MIN_SHARE:
            example = next(d.transparent_example for d in docs if d.transparent_example)
            hits.append(Hit("R_WHITE_ON_WHITE", (example,), min(share, 0.5) * 2))
    if invisible:
        hits.append(Hit("MANY_INVISIBLE_PARTS", (str(invisible),),
                        INVISIBLE_RATES[min(invisible, len(INVISIBLE_RATES)) - 1]))
    if zero:
        weight = 1.0 if zero > ZERO_FONT_FULL else ZERO_FONT_RATES[min(zero, len(ZERO_FONT_RATES)) - 1]
        hits.append(Hit("ZERO_FONT", (str(zero),), weight))
    return hits


def _pictures(docs: list[HtmlDoc]) -> list[Hit]:
    hits: list[Hit] = []
    found: set[str] = set()
    suspicious = 0.0
    for doc in docs:
        for symbol, shortest, longest in SHORT_LINK_IMG:
            if symbol not in found and shortest <= doc.text_len < longest and any(
                    i.in_link and i.embedded and i.width + i.height >= LINK_IMG_MIN_DIM
                    for i in doc.images):
                found.add(symbol)
                hits.append(Hit(symbol))
        if "R_EMPTY_IMAGE" not in found and doc.text_len < EMPTY_IMAGE_MAX_TEXT and any(
                not i.in_link and i.width + i.height >= EMPTY_IMAGE_MIN_DIM for i in doc.images):
            found.add("R_EMPTY_IMAGE")
            hits.append(Hit("R_EMPTY_IMAGE"))
        low, high = SUSPICIOUS_IMAGE_DIM
        picture_words = sum((i.width + i.height) / 100 for i in doc.images
                            if i.in_link and low < i.width + i.height < high)
        if doc.words + picture_words > 0:
            share = picture_words / (doc.words + picture_words)
            if share > 0.5:
                suspicious = max(suspicious, (share - 0.5) * 2)
    if suspicious > 0:
        hits.append(Hit("R_SUSPICIOUS_IMAGES", (f"{suspicious:.2f}",), suspicious))
    return hits
