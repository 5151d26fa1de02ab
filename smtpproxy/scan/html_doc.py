"""What an HTML part shows: its links with their texts, its images, and the text blocks a reader cannot see.

``html_doc(markup)`` reads one HTML part with a small tokenizer of regular
expressions and keeps only what the native rules need (``html_docs(ctx)``:
every HTML part of the message, read once per scan):

- ``links``: each <a href> with the text it displays (the phishing rule
  compares the two);
- ``images``: each <img> with its declared size, whether it sits inside a
  link, and whether it travels with the message (cid:/data:);
- ``text_len`` and ``words``: how much text the part shows;
- per text block (font, span, div, p, td with text of its own, directly
  or through inline elements such as <b>; rspamd looks only at blocks with
  no element inside, so "<font color=white><b>...</b></font>" escapes it):
  hidden (display:none, visibility:hidden, a font of 3 px or less),
  zero-size font, or low contrast (text colour close to its background),
  with the inherited styles rspamd's HTML parser applies. Stylesheets are
  not read: below an element with a class or a background picture the
  background counts as unknown, and colours are not compared with it.

Contract: never raises on any input; the cost is bounded by reading at most
MAX_HTML_CHARS of markup and MAX_TOKENS tags per message (what follows is
ignored, and ``truncated`` says so), with a tokenizer whose work is linear
in the markup: a hostile message costs tens of milliseconds at most.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from smtpproxy.scan.checks.base import CheckContext

# Markup read, in all HTML parts of a message.
MAX_HTML_CHARS = 128 * 1024
# Tags of any kind, comments and declarations, in all HTML parts of a message.
MAX_TOKENS = 5000
# How far up the open elements an end tag looks for its start tag.
MAX_END_TAG_SEARCH = 64
MAX_LINKS = 200
MAX_IMAGES = 100
MAX_LINK_TEXT_CHARS = 256
MAX_STYLE_CHARS = 2048
MAX_TAG_CHARS = 4096

# Where a token starts: "<" then "!", "?", a letter or "/" and a letter; any other "<" is text.
TOKEN_START_RE = re.compile(r"<(?:[!?]|/?[a-zA-Z])")
# A comment (to its end, or to the end of the markup), a declaration or
# processing instruction, or a start/end tag up to the next ">".
TOKEN_RE = re.compile(
    r"<!--(?:.*?-->|.*\Z)|<[!?][^>]*(?:>|\Z)"
    r"|<(?P<end>/)?(?P<name>[a-zA-Z][^\s/>]*)(?P<attrs>[^>]*)(?:>|\Z)", re.S)
ATTR_RE = re.compile(r"""([^\s=/>"']+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>"']+)))?""")
# Elements whose content is not markup.
RAW_TEXT = frozenset(("script", "style"))

# Elements that never hold content: no end tag is waited for.
VOID = frozenset("area base br col embed hr img input link meta param source track wbr".split())
# The blocks rspamd's visibility rules look at (rules/html.lua).
TEXT_BLOCKS = frozenset(("font", "span", "div", "p", "td"))
# Text inside these is not shown.
UNSHOWN = frozenset(("script", "style", "head", "title", "template", "noscript"))
# Font sizes at or under this many pixels are unreadable (rspamd's html_block).
INVISIBLE_FONT_PX = 3.0
# Colour distance under which text does not stand out from its background (rspamd's html_block).
MIN_VISIBLE_COLOR_DIFF = 0.1

NAMED_COLORS = {
    "white": (255, 255, 255), "black": (0, 0, 0), "red": (255, 0, 0), "green": (0, 128, 0),
    "blue": (0, 0, 255), "yellow": (255, 255, 0), "gray": (128, 128, 128),
    "grey": (128, 128, 128), "silver": (192, 192, 192), "navy": (0, 0, 128),
    "maroon": (128, 0, 0), "purple": (128, 0, 128), "teal": (0, 128, 128),
    "olive": (128, 128, 0), "lime": (0, 255, 0), "aqua": (0, 255, 255),
    "fuchsia": (255, 0, 255), "orange": (255, 165, 0), "snow": (255, 250, 250),
    "whitesmoke": (245, 245, 245), "ivory": (255, 255, 240), "ghostwhite": (248, 248, 255),
}
HEX_COLOR_RE = re.compile(r"#([0-9a-f]{3}|[0-9a-f]{6})\b")
RGB_COLOR_RE = re.compile(r"rgba?\(\s*(\d{1,3})\s*,\s*(\d{1,3})\s*,\s*(\d{1,3})\s*(?:,\s*([\d.]+%?)\s*)?\)")
SIZE_RE = re.compile(r"^\s*(-?[\d.]+)\s*(px|pt|em|rem|%|)\s*$")
NUMBER_RE = re.compile(r"^\s*(\d+)")
WORD_RE = re.compile(r"\w+")

Color = tuple[int, int, int, float]  # r, g, b, alpha 0..1


@dataclass
class Link:
    href: str
    text: str


@dataclass
class Image:
    width: int
    height: int
    in_link: bool
    embedded: bool  # cid: or data: source, carried by the message itself


@dataclass
class HtmlDoc:
    links: list[Link] = field(default_factory=list)
    images: list[Image] = field(default_factory=list)
    text_len: int = 0
    words: int = 0
    invisible_blocks: int = 0
    zero_size_blocks: int = 0
    # Text length in low-contrast blocks, and the first such block's evidence.
    transparent_len: int = 0
    transparent_example: str = ""
    truncated: bool = False
    # Tags, comments and declarations read.
    tokens: int = 0


@dataclass
class _Style:
    color: Color | None = None
    bgcolor: Color | None = None
    font_px: float | None = None
    hidden: bool = False
    # The background may come from where we do not look (a stylesheet class,
    # a background picture): colours are then not compared with it.
    bg_unknown: bool = False


@dataclass
class _Open:
    tag: str
    style: _Style
    # For a text block: the text it shows itself or through inline elements
    # (<b>, <a> ...; not through a nested text block), and how much of it is
    # hidden, in a zero-size font, or in low contrast (with the first such style).
    text_len: int = 0
    hidden_len: int = 0
    zero_len: int = 0
    transparent_len: int = 0
    transparent_style: _Style | None = None


def parse_color(value: str) -> Color | None:
    value = value.strip().lower()
    if not value:
        return None
    if value == "transparent":
        return (0, 0, 0, 0.0)
    named = NAMED_COLORS.get(value)
    if named:
        return (*named, 1.0)
    match = HEX_COLOR_RE.match(value) or HEX_COLOR_RE.match("#" + value)
    if match:
        digits = match.group(1)
        if len(digits) == 3:
            digits = "".join(c * 2 for c in digits)
        return (int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16), 1.0)
    match = RGB_COLOR_RE.match(value)
    if match:
        r, g, b = (min(255, int(match.group(i))) for i in (1, 2, 3))
        alpha = 1.0
        if match.group(4):
            text = match.group(4)
            try:
                alpha = float(text[:-1]) / 100 if text.endswith("%") else float(text)
            except ValueError:
                alpha = 1.0
        return (r, g, b, alpha)
    return None


def font_size_px(value: str, parent_px: float | None) -> float | None:
    """A CSS font-size in pixels; relative sizes scale the parent's (16 px if unknown)."""
    match = SIZE_RE.match(value.lower())
    if not match:
        return None
    try:
        number = float(match.group(1))
    except ValueError:
        return None
    unit = match.group(2)
    base = parent_px if parent_px is not None else 16.0
    if unit == "pt":
        return number * 4 / 3
    if unit in ("em", "rem"):
        return number * base
    if unit == "%":
        return number * base / 100
    return number  # px, or a bare number


def similar_colors(fg: Color, bg: Color) -> bool:
    """rspamd's weighted RGB distance: under MIN_VISIBLE_COLOR_DIFF the text does not show."""
    dr, dg, db = fg[0] - bg[0], fg[1] - bg[1], fg[2] - bg[2]
    ravg = (fg[0] + bg[0]) / 2
    square = 2 * dr * dr + 4 * dg * dg + 3 * db * db + ravg * (dr * dr - db * db) / 256
    return (max(square, 0.0) ** 0.5) / 256 < MIN_VISIBLE_COLOR_DIFF


def low_contrast(style: _Style) -> bool:
    """rspamd's ``transparent`` block: text colour too close to the background, or see-through."""
    fg, bg = style.color, style.bgcolor
    if fg is not None and fg[3] < 0.04:
        return True
    if style.bg_unknown:
        return False
    if fg is not None and bg is not None:
        return bg[3] > 0.04 and similar_colors(fg, bg)
    if fg is not None:  # no background declared: the reader's is white
        return similar_colors(fg, (255, 255, 255, 1.0))
    if bg is not None:  # no colour declared: the text is black
        return bg[3] > 0.04 and similar_colors((0, 0, 0, 1.0), bg)
    return False


def _style_of(tag: str, attrs: list[tuple[str, str | None]], parent: _Style) -> _Style:
    """The element's style: its parent's, changed by its attributes and style declarations."""
    style = _Style(parent.color, parent.bgcolor, parent.font_px, parent.hidden, parent.bg_unknown)
    for name, value in attrs:
        if value is None:
            continue
        if name in ("class", "background"):
            style.bg_unknown = True
        elif name == "bgcolor":
            color = parse_color(value)
            if color is not None:
                style.bgcolor, style.bg_unknown = color, False
        elif name == "color" and tag == "font":
            style.color = parse_color(value) or style.color
        elif name == "text" and tag == "body":
            style.color = parse_color(value) or style.color
        elif name == "hidden":
            style.hidden = True
        elif name == "style":
            _apply_css(style, value, parent)
    return style


def _apply_css(style: _Style, declarations: str, parent: _Style) -> None:
    for declaration in declarations[:MAX_STYLE_CHARS].split(";"):
        prop, _, val = declaration.partition(":")
        prop, val = prop.strip().lower(), val.lower().replace("!important", "").strip()
        if prop == "color":
            style.color = parse_color(val) or style.color
        elif prop in ("background-color", "background", "background-image"):
            if "url(" in val or "gradient(" in val:
                style.bg_unknown = True
                continue
            for token in (val, *val.split()):
                color = parse_color(token)
                if color is not None:
                    style.bgcolor, style.bg_unknown = color, False
                    break
        elif prop == "font-size":
            size = font_size_px(val, parent.font_px)
            if size is not None:
                style.font_px = size
        elif prop == "display" and val == "none":
            style.hidden = True
        elif prop == "visibility" and val in ("hidden", "collapse"):
            style.hidden = True
        elif prop == "opacity" and val in ("0", "0.0", "0%"):
            style.hidden = True


def _dimension(attrs: dict[str, str | None], name: str) -> int:
    value = attrs.get(name)
    if value:
        match = NUMBER_RE.match(value)
        if match:
            return min(int(match.group(1)), 100_000)
    style = attrs.get("style") or ""
    match = re.search(rf"(?:^|;)\s*{name}\s*:\s*(\d+)\s*(?:px)?\s*(?:;|$)", style.lower())
    return min(int(match.group(1)), 100_000) if match else 0


class _Reader:
    """Tag and text events from a tokenizer of regular expressions.

    Not html.parser: on hostile markup ("<a<a<a...", "</</</...") its cost
    grows with the square of the length (seconds for 128 KB, Python 3.11).
    Here each "<" either starts a token that ends at the next ">" or is
    text, so the work is linear and done in C; what a browser would read
    differently (a ">" inside a quoted attribute) only shifts a boundary.
    """

    def __init__(self, doc: HtmlDoc):
        self.doc = doc
        self.stack: list[_Open] = [_Open("#root", _Style())]
        self.unshown = 0
        self.link: Link | None = None
        self.link_chars: list[str] = []

    # -------------------------------------------------------------- structure

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        top = self.stack[-1]
        if tag == "a":
            self._end_link()
            href = next((v for k, v in attrs if k == "href" and v), None)
            if href is not None and len(self.doc.links) < MAX_LINKS:
                self.link, self.link_chars = Link(href.strip(), ""), []
        elif tag == "img":
            if len(self.doc.images) < MAX_IMAGES:
                values = dict(attrs)
                src = (values.get("src") or "").strip().lower()
                self.doc.images.append(Image(
                    _dimension(values, "width"), _dimension(values, "height"),
                    in_link=self.link is not None,
                    embedded=src.startswith(("cid:", "data:"))))
            return
        if tag in VOID:
            return
        if tag in UNSHOWN:
            self.unshown += 1
        self.stack.append(_Open(tag, _style_of(tag, attrs, top.style)))

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._end_link()
        # Close up to the most recent element of that name; a stray end tag is ignored.
        for depth in range(len(self.stack) - 1, max(0, len(self.stack) - 1 - MAX_END_TAG_SEARCH), -1):
            if self.stack[depth].tag == tag:
                while len(self.stack) > depth:
                    self._close(self.stack.pop())
                return

    def handle_data(self, data: str) -> None:
        if self.unshown:
            return
        text = data.strip()
        if not text:
            return
        size = len(text)
        self.doc.text_len += size
        block = self._text_block()
        if block is not None:
            style = self.stack[-1].style
            block.text_len += size
            if style.hidden or (style.font_px is not None and style.font_px <= INVISIBLE_FONT_PX):
                block.hidden_len += size
            if style.font_px == 0:
                block.zero_len += size
            if low_contrast(style):
                block.transparent_len += size
                block.transparent_style = block.transparent_style or style
        self.doc.words += len(WORD_RE.findall(text))
        if self.link is not None and sum(map(len, self.link_chars)) < MAX_LINK_TEXT_CHARS:
            self.link_chars.append(data)

    # -------------------------------------------------------------- helpers

    def _end_link(self) -> None:
        if self.link is not None:
            self.link.text = " ".join("".join(self.link_chars).split())[:MAX_LINK_TEXT_CHARS]
            self.doc.links.append(self.link)
            self.link, self.link_chars = None, []

    def _text_block(self) -> _Open | None:
        """The innermost open text block, looked for among the last few open elements."""
        for element in reversed(self.stack[-MAX_END_TAG_SEARCH:]):
            if element.tag in TEXT_BLOCKS:
                return element
        return None

    def _close(self, element: _Open) -> None:
        if element.tag in UNSHOWN:
            self.unshown -= 1
            return
        if element.tag not in TEXT_BLOCKS or not element.text_len:
            return
        doc = self.doc
        if element.hidden_len:
            doc.invisible_blocks += 1
        if element.zero_len:
            doc.zero_size_blocks += 1
        style = element.transparent_style
        if style is not None:
            doc.invisible_blocks += 1
            doc.transparent_len += element.transparent_len
            if not doc.transparent_example:
                doc.transparent_example = (f"{element.tag} color {_hex(style.color)} "
                                           f"bgcolor {_hex(style.bgcolor)}")

    def finish(self) -> None:
        self._end_link()
        while len(self.stack) > 1:
            self._close(self.stack.pop())


def _hex(color: Color | None) -> str:
    return "none" if color is None else "#{:02x}{:02x}{:02x}".format(*color[:3])


def html_docs(ctx: CheckContext) -> list[HtmlDoc]:
    """The message's HTML parts read once per scan, shared by the checks that need them."""
    cached = ctx.facts.setdefault("html_doc", {})
    docs = cached.get("docs")
    if docs is None:
        # One budget for the whole message, however many HTML parts it has.
        chars, tokens = MAX_HTML_CHARS, MAX_TOKENS
        docs = cached["docs"] = []
        for part in ctx.message.html_parts:
            doc = html_doc(part[:chars], tokens)
            doc.truncated = doc.truncated or len(part) > chars
            docs.append(doc)
            chars -= min(len(part), chars)
            tokens -= doc.tokens
            if chars <= 0 or tokens <= 0:
                break
    return docs


def html_doc(markup: str, max_tokens: int = MAX_TOKENS) -> HtmlDoc:
    """Links, images, text size and hidden blocks of one HTML part; never raises."""
    doc = HtmlDoc()
    if len(markup) > MAX_HTML_CHARS:
        markup = markup[:MAX_HTML_CHARS]
        doc.truncated = True
    reader = _Reader(doc)
    try:
        _tokenize(markup, reader, max_tokens)
    except Exception:  # a surprise in hostile markup must not cost the scan
        doc.truncated = True
    try:
        reader.finish()
    except Exception:
        doc.truncated = True
    return doc


def _tokenize(markup: str, reader: _Reader, max_tokens: int) -> None:
    low = markup.lower()
    pos, end = 0, len(markup)
    while pos < end:
        start = TOKEN_START_RE.search(markup, pos)
        if start is None:
            reader.handle_data(html.unescape(markup[pos:]))
            return
        lt = start.start()
        if lt > pos:
            reader.handle_data(html.unescape(markup[pos:lt]))
        reader.doc.tokens += 1
        if reader.doc.tokens > max_tokens:
            reader.doc.truncated = True
            return
        token = TOKEN_RE.match(markup, lt)  # matches wherever a token starts
        pos = token.end() if token else lt + 1
        name = token.group("name") if token else None
        if name is None:
            continue  # comment, declaration, processing instruction
        name = name.lower()
        if token.group("end"):
            reader.handle_endtag(name)
            continue
        attrs = [(key.lower(), html.unescape(next((v for v in values if v), "")))
                 for key, *values in ATTR_RE.findall(token.group("attrs")[:MAX_TAG_CHARS])]
        reader.handle_starttag(name, attrs)
        if name in RAW_TEXT:  # script/style content is no markup: skip to its end tag
            close = low.find("</" + name, pos)
            pos = end if close < 0 else close
