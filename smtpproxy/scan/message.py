"""The message model: each message is parsed once, and every check reads the result.

The raw bytes are kept untouched (DKIM and ARC need them). Parsing never
raises: whatever the email package or our own decoding finds wrong is
collected in ``defects`` and becomes a symbol (MIME_BAD and friends), not an
exception. Text is decoded with the declared charset when Python knows it,
else as UTF-8 and then Latin-1, always with replacement, so every charset in
the corpora yields a string.
"""

from __future__ import annotations

import binascii
import codecs
import email
import email.header
import email.message
import email.policy
import email.utils
import html
import quopri
import re
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message as EmailMessage
from functools import cached_property
from itertools import islice

from smtpproxy.headers import EOL, header_block_end

# Bounds that keep a hostile message from costing more than it is worth. The
# email package spends about 2 us per header line and per boundary line, and
# recurses once per nesting level: a 10 MB message of 1.3 million header
# fields or 300,000 parts cost it seconds and 400 MB. So the bytes it is
# handed are cut first (``bounded``), each cut a defect (MIME_BAD), never an
# exception; ``raw`` stays whole for DKIM and ARC.
MAX_PARTS = 200
# Header fields of the message's own header block.
MAX_HEADER_FIELDS = 1000
# Lines starting with "--" (every MIME part starts at one).
MAX_BOUNDARY_LINES = 1000
# multipart/* and message/* entities: nesting deeper needs one per level.
MAX_CONTAINERS = 50
# Lines of any kind (10 MB of base64 is about 135,000).
MAX_LINES = 300_000
MAX_TEXT_CHARS = 512 * 1024
MAX_URLS = 500
# Attached messages sent base64- or quoted-printable-encoded (the email
# package leaves them unparsed) are decoded and parsed: at most this many per
# message, each under the bounds above.
MAX_ENCODED_MESSAGES = 5
MAX_FILENAME_CHARS = 1024
# A From field is read for addresses this far (a legitimate one is a line or
# two): the address parser costs about 7 us per address, 0.7 s for 2 MB of them.
MAX_FROM_CHARS = 4096
# Types whose parts are text a reader sees beside (or instead of) the HTML.
CALENDAR_TYPES = ("text/calendar",)
MESSAGE_TYPES = ("message/rfc822", "message/global")

URL_RE = re.compile(r"""(?i)\b(?:https?://|www\.)[^\s<>"'()\[\]{}]+""")
HREF_RE = re.compile(r"""(?i)\bhref\s*=\s*["']?([^"'\s>]+)""")
# The same, anchored: tried only where a cheap search found "http", "www." or "href".
URL_AT_RE = re.compile(r"""(?i)(?:https?://|www\.)[^\s<>"'()\[\]{}]+""")
HREF_AT_RE = re.compile(r"""(?i)href\s*=\s*["']?([^"'\s>]+)""")
# "user@example.org" or "Plain Name <user@example.org>": atoms and dots only
# (no quotes, comments, groups, routes or lists), which parseaddr returns as is.
SIMPLE_ADDRESS_RE = re.compile(
    r"[ \t]*(?:([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)"
    r"|[A-Za-z0-9 \t'.-]*<([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>)[ \t]*\Z")
SCHEME_RE = re.compile(r"(?i)^(?:https?://)?")
# compat32 hands 8-bit header bytes back as surrogate escapes.
SURROGATE_RE = re.compile("[\udc80-\udcff]")
TAG_RE = re.compile(r"(?s)<(script|style)\b.*?</\1\s*>|<[^>]*>")
SPACE_RE = re.compile(r"[ \t\r\f\v]+")
# Where a header field starts: a line end not followed by folding space.
FIELD_START_RE = re.compile(rb"(?:\r\n|\n|\r(?!\n))(?=[^ \t])")
BOUNDARY_LINE_RE = re.compile(rb"(?:\r\n|\n|\r)--")
CONTAINER_RE = re.compile(rb"(?i)(?:\A|\r\n|\n|\r)[ \t]*content-type[ \t]*:\s*(?:multipart|message)/")


@dataclass
class Part:
    """A leaf of the MIME tree, or an attached message (message/rfc822) as a whole."""

    content_type: str
    charset: str | None
    filename: str | None
    disposition: str | None
    size: int
    # Inside an attached message (message/rfc822), at any depth.
    nested: bool = False
    # The decoded bytes of parts that are not body text (attachments, images,
    # archives): what the attachment checks read. Empty for an attached message.
    payload: bytes = field(default=b"", repr=False)

    @property
    def is_attachment(self) -> bool:
        return self.disposition == "attachment" or bool(self.filename)


@dataclass
class Message:
    raw: bytes
    headers: list[tuple[str, str]]
    parts: list[Part] = field(default_factory=list)
    text_parts: list[str] = field(default_factory=list)
    html_parts: list[str] = field(default_factory=list)
    # text/calendar parts (invitations): text beside the HTML, not attachments.
    calendar_parts: list[str] = field(default_factory=list)
    # Indexes into text_parts, html_parts and calendar_parts of the bodies of
    # attached messages (message/rfc822): their text is the message's text
    # too (URLs, Bayes, rules), but not its own body (``own_body``).
    nested_text: set[int] = field(default_factory=set)
    nested_html: set[int] = field(default_factory=set)
    nested_calendar: set[int] = field(default_factory=set)
    defects: list[str] = field(default_factory=list)
    # Every From field as written (unfolded only by the parser, encoded words
    # still encoded, 8-bit bytes read as UTF-8): DMARC's author domains must
    # not split an address at a comma inside an encoded display name.
    from_fields: list[str] = field(default_factory=list)
    # The header fields of every MIME entity (the message itself, containers,
    # leaves, attached messages and their parts), in tree order, as
    # (lower-cased name, decoded value, value as written with LF line ends):
    # what SpamAssassin's mimeheader rules read.
    mime_headers: list[tuple[str, str, str]] = field(default_factory=list)

    # ---------------------------------------------------------------- headers

    @cached_property
    def _by_name(self) -> dict[str, list[str]]:
        """Field values by lower-cased name, in order (built on first use)."""
        index: dict[str, list[str]] = {}
        for key, value in self.headers:
            index.setdefault(key.lower(), []).append(value)
        return index

    def header(self, name: str) -> str | None:
        """The first field called ``name`` (case-insensitive), decoded."""
        values = self._by_name.get(name.lower())
        return values[0] if values else None

    def header_all(self, name: str) -> list[str]:
        return list(self._by_name.get(name.lower(), ()))

    @cached_property
    def from_address(self) -> str:
        """The first address of the (first) From: field, lower-cased; "" if none parses.

        Read from the field as written (``from_addresses``), so an encoded
        display name holding a comma or an address list yields the address."""
        if self.from_addresses:
            return self.from_addresses[0]
        value = self.header("From")
        if not value:
            return ""
        try:
            return parse_address(value).strip().lower()
        except Exception:  # parseaddr recurses per token: a huge field can exhaust the stack
            return ""

    @cached_property
    def from_addresses(self) -> list[str]:
        """Every address of every From field, lower-cased, in order (RFC 5322
        allows a list: "From: a@x, b@y"). Read from the fields as written, so a
        comma inside a quoted or encoded display name splits nothing."""
        found: list[str] = []
        for value in self.from_fields:
            if len(value) > MAX_FROM_CHARS:  # the addresses before the cut
                value = value[:MAX_FROM_CHARS].rpartition(",")[0]
            match = SIMPLE_ADDRESS_RE.match(value)
            if match:
                found.append((match.group(1) or match.group(2)).lower())
                continue
            try:
                pairs = email.utils.getaddresses([value])
            except Exception:  # recursion on a huge field, as above
                continue
            found.extend(addr.strip().lower() for _, addr in pairs if "@" in addr)
        return found

    @cached_property
    def from_domain(self) -> str:
        return self.from_address.rpartition("@")[2] if "@" in self.from_address else ""

    @cached_property
    def subject(self) -> str:
        return self.header("Subject") or ""

    # ---------------------------------------------------------------- body

    @cached_property
    def html_texts(self) -> list[str]:
        """Each HTML part as plain text (tags dropped, entities decoded), rendered once."""
        return [html_to_text(h) for h in self.html_parts]

    @cached_property
    def html_text(self) -> str:
        """The HTML parts as plain text (tags dropped, entities decoded)."""
        return "\n".join(self.html_texts)

    def own_body(self) -> tuple[list[str], list[str], list[str]]:
        """(text parts, HTML parts as text, calendar parts) of the message's own
        body, leaving out those of attached messages; all of them when the
        message has no body of its own (a message forwarded as attachment only)."""
        own = ([t for i, t in enumerate(self.text_parts) if i not in self.nested_text],
               [t for i, t in enumerate(self.html_texts) if i not in self.nested_html],
               [t for i, t in enumerate(self.calendar_parts) if i not in self.nested_calendar])
        if any(own):
            return own
        return list(self.text_parts), list(self.html_texts), list(self.calendar_parts)

    @cached_property
    def visible_text(self) -> str:
        """What a reader sees: the text parts, or the HTML rendered to text."""
        if self.text_parts:
            return "\n".join(self.text_parts)
        return self.html_text

    @cached_property
    def urls(self) -> list[str]:
        found: list[str] = []
        seen: set[str] = set()
        for source in (*self.text_parts, *self.html_parts, *self.calendar_parts):
            for url in find_urls(source):
                url = url.rstrip(".,;:!?")
                if url not in seen and not url.lower().startswith(("mailto:", "#", "cid:")):
                    seen.add(url)
                    found.append(url)
                    if len(found) >= MAX_URLS:
                        return found
        return found

    @cached_property
    def url_domains(self) -> list[str]:
        domains: dict[str, None] = {}  # ordered and distinct
        for url in self.urls:
            host = SCHEME_RE.sub("", url, 1).split("/", 1)[0]
            host = host.rsplit("@", 1)[-1].split(":", 1)[0].strip(".").lower()
            if host:
                domains[host] = None
        return list(domains)

    @property
    def attachments(self) -> list[Part]:
        return [p for p in self.parts if p.is_attachment]


def parse_address(value: str) -> str:
    """``email.utils.parseaddr(value)[1]``, without the parser for the common
    shapes: a bare address, or a plain display name and <address>."""
    match = SIMPLE_ADDRESS_RE.match(value)
    if match:
        return match.group(1) or match.group(2)
    return email.utils.parseaddr(value)[1]


def find_urls(text: str) -> list[str]:
    """``URL_RE.findall(text) + HREF_RE.findall(text)``, in that order, found faster.

    A regex search tries the pattern at every position; for ASCII text (the
    usual case) a lower-cased copy is searched for the literal starts with
    str.find instead, and the pattern is tried only there. Other text takes
    the regexes (case folding may change its length, and (?i) matches some
    non-ASCII letters).
    """
    if not text.isascii():
        return URL_RE.findall(text) + HREF_RE.findall(text)
    low = text.lower()
    return _find_at(text, low, ("http", "www."), URL_AT_RE, 0) + _find_at(text, low, ("href",), HREF_AT_RE, 1)


def _find_at(text: str, low: str, starts: tuple[str, ...], pattern: re.Pattern, group: int) -> list[str]:
    """What ``findall`` of ``\\b`` + ``pattern`` gives, trying it only where a start is."""
    found: list[str] = []
    nxt = {start: low.find(start) for start in starts}
    pos = 0
    while True:
        for start, at in nxt.items():
            if 0 <= at < pos:
                nxt[start] = low.find(start, pos)
        candidates = [at for at in nxt.values() if at >= 0]
        if not candidates:
            return found
        at = min(candidates)
        before = text[at - 1] if at else " "
        match = None if before.isalnum() or before == "_" else pattern.match(text, at)  # \b
        if match is None:
            pos = at + 1
        else:
            found.append(match.group(group))
            pos = match.end()


def html_to_text(markup: str) -> str:
    text = TAG_RE.sub(" ", markup)
    return SPACE_RE.sub(" ", html.unescape(text)).strip()


def decode_header_value(value: str) -> str:
    """RFC 2047 words to text; undecodable bytes become U+FFFD, never an exception."""
    if "=?" not in value:
        return value
    try:
        chunks = email.header.decode_header(value)
    except Exception:
        return value
    out = []
    for chunk, charset in chunks:
        if isinstance(chunk, bytes):
            out.append(decode_bytes(chunk, charset))
        else:
            out.append(chunk)
    return "".join(out)


def decode_bytes(data: bytes, charset: str | None) -> str:
    if charset:
        try:
            return data.decode(charset, errors="replace")
        except LookupError:
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _header_text(value, charset: str | None = None) -> str:
    """A field's value as text: raw 8-bit bytes as UTF-8, else in ``charset``
    (the body's, which such mailers use for the headers too), else Latin-1;
    then RFC 2047 encoded words."""
    if isinstance(value, email.header.Header):
        return decode_header_value(str(value))
    text = str(value)
    if not text.isascii() and SURROGATE_RE.search(text):
        data = text.encode("utf-8", "surrogateescape")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = _decode_strict(data, charset) or data.decode("latin-1")
    return decode_header_value(text)


def _decode_strict(data: bytes, charset: str | None) -> str | None:
    """``data`` in ``charset`` if it reads without error and the charset keeps
    ASCII as ASCII (not UTF-16 or UTF-7, which read nearly anything); else None."""
    if not charset:
        return None
    try:
        if codecs.lookup(charset).name.startswith(("utf-16", "utf-32", "utf-7")):
            return None
        return data.decode(charset)
    except (LookupError, UnicodeDecodeError):
        return None


def _body_charset(em: EmailMessage) -> str | None:
    """The first charset other than ASCII or UTF-8 the message's parts declare
    (of the first 20): how a mailer that writes raw 8-bit headers wrote them."""
    for index, part in enumerate(em.walk()):
        if index >= 20:
            break
        charset = part.get_content_charset()
        if charset and charset not in ("us-ascii", "ascii", "utf-8", "utf8"):
            return charset
    return None


def _raw_text(value) -> str:
    """A stored header value as text: compat32 keeps 8-bit bytes as surrogate escapes."""
    text = str(value)
    if text.isascii():
        return text
    return text.encode("ascii", "surrogateescape").decode("utf-8", "replace")


def _nth(pattern: re.Pattern[bytes], data: bytes, n: int, end: int | None = None) -> re.Match | None:
    """The ``n``-th match (1-based) of ``pattern`` in ``data[:end]``, None when there are fewer."""
    found = pattern.finditer(data, 0, len(data) if end is None else end)
    return next(islice(found, n - 1, None), None)


def bounded(body: bytes) -> tuple[bytes, list[str]]:
    """``body`` cut so that the email package's work is bounded, and the defects for each cut.

    Only searches in C (regex, count) over the bytes: the cost is linear
    and small whatever the structure."""
    defects = []
    end = header_block_end(body)
    extra = _nth(FIELD_START_RE, body, MAX_HEADER_FIELDS, end) if end else None
    if extra is not None:  # keep the first fields, drop the rest of the header block
        body = body[:extra.end()] + body[end:]
        defects.append("TooManyHeaderFields")
    cut = len(body)
    # Counted first with bytes.count (a regex over 10 MB holds the GIL for
    # a tenth of a second); the regex only finds where to cut.
    boundaries = body.count(b"\n--") + body.count(b"\r--")
    if boundaries > MAX_BOUNDARY_LINES:
        found = _nth(BOUNDARY_LINE_RE, body, MAX_BOUNDARY_LINES + 1)
        if found is not None:
            cut = found.start()
            defects.append("TooManyParts")
    if body.lower().count(b"content-type") > MAX_CONTAINERS:
        found = _nth(CONTAINER_RE, body, MAX_CONTAINERS + 1)
        if found is not None:
            cut = min(cut, found.start())
            defects.append("TooManyContainers")
    if body.count(b"\n") + body.count(b"\r") > MAX_LINES:  # else fewer lines than that
        found = _nth(EOL, body, MAX_LINES)
        if found is not None and found.end() < cut:
            cut = found.end()
            defects.append("TooManyLines")
    if cut < len(body):
        body = body[:cut] + b"\r\n"
    return body, defects


def parse(raw: bytes) -> Message:
    """Parse ``raw`` once; never raises."""
    # An mbox "From " line (corpora) is not a header.
    body = raw[raw.find(b"\n") + 1:] if raw.startswith(b"From ") else raw
    body, cuts = bounded(body)
    try:
        em = message_from_bytes(body, policy=email.policy.compat32)
    except Exception as exc:  # the parser is lenient; this is belt and braces
        return Message(raw=raw, headers=[], defects=[*cuts, f"unparseable: {type(exc).__name__}"])
    headers = []
    # The stored values, not items(): compat32 turns a value with raw 8-bit
    # bytes (UTF-8 headers, RFC 6532, common in practice) into a Header whose
    # text has U+FFFD for every byte; _header_text decodes them as UTF-8, else
    # Latin-1.
    charset = _body_charset(em) if not all(str(v).isascii() for v in em.values()) else None
    for name, value in em.raw_items():
        headers.append((str(name), _header_text(value, charset).replace("\r", "").replace("\n", " ")))
    msg = Message(raw=raw, headers=headers, from_fields=[
        _raw_text(value) for name, value in em.raw_items() if name.lower() == "from"])
    msg.defects.extend(cuts)
    _walk(msg, em, False, _Budget())
    return msg


class _Budget:
    """What one message's walk may still spend: entities, and attached messages to decode."""

    def __init__(self) -> None:
        self.entities = MAX_PARTS
        self.encoded_messages = MAX_ENCODED_MESSAGES


def _walk(msg: Message, part: EmailMessage, nested: bool, budget: _Budget) -> None:
    """Every entity of the tree under ``part``, depth first, as email's walk()
    but entering attached messages that were sent encoded. Depth is bounded by
    ``bounded`` (MAX_CONTAINERS), the count here."""
    if budget.entities <= 0:
        if "TooManyParts" not in msg.defects:
            msg.defects.append("TooManyParts")
        return
    budget.entities -= 1
    msg.defects.extend(type(d).__name__ for d in part.defects)
    for name, value in part.raw_items():
        written = str(value).replace("\r\n", "\n")
        msg.mime_headers.append((str(name).lower(), _header_text(value).replace("\r", "").replace("\n", " "),
                                 _raw_text(written)))
    ctype = part.get_content_type()
    if ctype in MESSAGE_TYPES:
        msg.parts.append(Part(ctype, None, _filename(part), part.get_content_disposition(), 0, nested))
        inner = _encoded_message(msg, part, budget)
        if inner is not None:
            _walk(msg, inner, True, budget)
            return
    if part.is_multipart():
        for sub in part.get_payload():
            _walk(msg, sub, nested or ctype in MESSAGE_TYPES, budget)
        return
    _add_part(msg, part, ctype, nested)


def _encoded_message(msg: Message, part: EmailMessage, budget: _Budget) -> EmailMessage | None:
    """An attached message sent base64 or quoted-printable (RFC 2046 forbids it,
    mailers do it), decoded and parsed; None for any other message part."""
    cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if cte not in ("base64", "quoted-printable") or not part.is_multipart():
        return None
    if budget.encoded_messages <= 0:
        msg.defects.append("TooManyEncodedMessages")
        return None
    budget.encoded_messages -= 1
    # The email package parsed the encoded text as a message: with base64 (no
    # colon in its alphabet) all of it landed in the body; otherwise write it back.
    (wrapped,) = part.get_payload()[:1] or [None]
    if wrapped is None:
        return None
    try:
        text = wrapped.get_payload() if not wrapped.keys() and isinstance(wrapped.get_payload(), str) \
            else wrapped.as_string()
        data = text.encode("ascii", "surrogateescape")
        data = binascii.a2b_base64(data) if cte == "base64" else quopri.decodestring(data)
    except (binascii.Error, ValueError, LookupError, TypeError):
        msg.defects.append("UndecodableMessage")
        return None
    data, cuts = bounded(data)
    msg.defects.extend(cuts)
    try:
        return message_from_bytes(data, policy=email.policy.compat32)
    except Exception:  # the parser is lenient; belt and braces as in parse()
        msg.defects.append("UndecodableMessage")
        return None


def _filename(part: EmailMessage) -> str | None:
    """The part's file name: Content-Disposition filename or Content-Type name,
    RFC 2231 (charset, continuations) or RFC 2047 encoded words, decoded."""
    try:
        filename = part.get_filename()
        if filename is not None and "\ufffd" in filename:
            # Raw 8-bit bytes in the field (compat32 replaces them): read the
            # parameters again from the field as UTF-8 (else Latin-1).
            filename = _filename_8bit(part) or filename
    except Exception:
        return None
    if filename is None:
        return None
    return _header_text(filename)[:MAX_FILENAME_CHARS]


def _filename_8bit(part: EmailMessage) -> str | None:
    fields = email.message.Message()
    for name, value in part.raw_items():
        if name.lower() in ("content-disposition", "content-type"):
            text = str(value)
            if not text.isascii():
                text = decode_bytes(text.encode("utf-8", "surrogateescape"), None)
            fields[name] = text
    return fields.get_filename()


def _add_part(msg: Message, part: EmailMessage, ctype: str, nested: bool) -> None:
    try:
        payload = part.get_payload(decode=True) or b""
    except Exception:
        payload = b""
        msg.defects.append("UndecodablePayload")
    filename = _filename(part)
    disposition = part.get_content_disposition()
    charset = part.get_content_charset()
    is_body = disposition != "attachment" and not filename and (
        ctype in ("text/plain", "text/html") or ctype in CALENDAR_TYPES)
    msg.parts.append(Part(ctype, charset, filename, disposition, len(payload), nested,
                          b"" if is_body else payload))
    if not is_body:
        return
    text = decode_bytes(payload[: MAX_TEXT_CHARS * 4], charset)[:MAX_TEXT_CHARS]
    if ctype in CALENDAR_TYPES:
        texts, nested_set = msg.calendar_parts, msg.nested_calendar
    elif ctype == "text/plain":
        texts, nested_set = msg.text_parts, msg.nested_text
    else:
        texts, nested_set = msg.html_parts, msg.nested_html
    if nested:
        nested_set.add(len(texts))
    texts.append(text)
