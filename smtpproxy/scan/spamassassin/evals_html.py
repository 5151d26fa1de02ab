"""What SpamAssassin's HTML parser (Mail::SpamAssassin::HTML) records per HTML part,
for the HTMLEval tests: the tags seen, the part's length, the anchors' text (an
image inside a link as "<img>"), the comments and the titles.

One pass of one regex over each HTML part, tokenising as HTML::Parser does
for these purposes: a start tag is ``<`` and a letter, an end tag ``</`` and
a letter, ``<!--...-->`` and other ``<!...>`` (not DOCTYPE) are comments, and
the content of ``<script>``/``<style>`` is not parsed for tags. Only the
statistics below are kept; font colours, sizes, obfuscation and tag-ratio
statistics are not computed (their tests stay skipped).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

TOKEN_RE = re.compile(
    r"<!--.*?--\s*>"  # comment
    r"|<!(?!--)[^>]*>"  # declaration or bogus comment
    r"|<(/?)([a-zA-Z][^\s/>]*)((?:[^>\"']|\"[^\"]*\"|'[^']*')*)>",  # tag
    re.S)
RAW_TEXT_END = {"script": re.compile(r"</script\s*>", re.I), "style": re.compile(r"</style\s*>", re.I)}
MAX_ANCHORS = 1000  # a hostile part's million links cost no more than this


@dataclass
class HtmlStats:
    inside: dict[str, int] = field(default_factory=dict)  # tag -> open count (present: seen)
    length: int = 0
    tags: int = 0
    closed_extra: int = 0
    anchor: list[str] = field(default_factory=list)
    comment: list[str] = field(default_factory=list)
    title: list[str] = field(default_factory=list)

    @property
    def closed_extra_ratio(self) -> float | None:
        return self.closed_extra / self.tags if self.tags else None


def html_stats(markup: str) -> HtmlStats:
    st = HtmlStats(length=len(markup))
    inside = st.inside
    pos = 0
    n = len(markup)
    while pos < n:
        m = TOKEN_RE.search(markup, pos)
        text = markup[pos:m.start()] if m else markup[pos:]
        if text:
            _text(st, text)
        if m is None:
            break
        pos = m.end()
        token = m.group(0)
        if m.group(2) is None:
            if token[:9].lower() == "<!doctype":
                st.tags += 1
                inside["!doctype"] = 0
            else:
                st.comment.append(token)
            continue
        tag = m.group(2).lower()
        num = -1 if m.group(1) else 1
        st.tags += 1
        inside[tag] = inside.get(tag, 0) + num
        if inside[tag] < 0:
            inside[tag] = 0
            st.closed_extra += 1
        if num == 1:
            if tag == "img" and inside.get("a", 0) > 0 and st.anchor:
                st.anchor[-1] += "<img>\n"
            elif tag == "a" and len(st.anchor) < MAX_ANCHORS:
                st.anchor.append("")
            elif tag == "title":
                st.title.append("")
            elif tag in RAW_TEXT_END:  # its content is text, not markup
                end = RAW_TEXT_END[tag].search(markup, pos)
                pos = end.start() if end else n
    return st


def _text(st: HtmlStats, text: str) -> None:
    inside = st.inside
    if inside.get("script", 0) > 0 or inside.get("style", 0) > 0:
        return
    if inside.get("a", 0) > 0 and st.anchor:
        st.anchor[-1] += text
    if inside.get("title", 0) > 0 and st.title:
        st.title[-1] += text
