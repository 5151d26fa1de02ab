"""A parsed message to the set of tokens the classifier counts.

Tokens, each prefixed by where it was found so the same word in a Subject
and in the body count apart:

- body words: the decoded text parts and the HTML parts rendered to text
  (message.py decodes every charset, with replacement), lower-cased, 3 to
  ``MAX_WORD`` characters; longer runs become a ``skip:`` token of their first
  character and length class (as SpamBayes does), so base64 blobs and
  hashes do not flood the table; Chinese, Japanese and Korean text, written
  without spaces, is cut into overlapping character pairs;
- word pairs: each word with the next (``a b``), which carries phrase
  evidence ("click here", "unsubscribe below") single words do not;
- URLs: ``url:`` each host and each parent domain of it, ``url:tld`` and the
  first path segment;
- headers: Subject words, From address and domain, Reply-To domain, To
  domain, the Received chain's host names and the count of hops, the
  Content-Type of every part with its charset, X-Mailer / User-Agent,
  Message-ID's domain, and the presence of a few headers;
- HTML markup: ``html:`` each tag name and tag.attribute used;
- simple shape: the number of attachments, whether the text is HTML-only.

The result is a list of distinct tokens in order of discovery (headers
first), cut at ``max_tokens``. Never raises on content.

``is_form`` tells the tokens that describe the message's form (MIME
structure, markup, which headers are present, the hop count) from those of
its content (words, phrases, addresses, hosts, URLs): any mail shares its
form with some of the training, so only content says whether the training
knows the message (classifier.familiarity).
"""

from __future__ import annotations

import re

from smtpproxy.scan.message import Message

MIN_WORD = 3
MAX_WORD = 20
# Body text read per message: enough for the evidence, bounded cost.
MAX_BODY_CHARS = 100_000

WORD_RE = re.compile(r"[^\W_][\w'$€£¥.\-!%]*[\w$€£¥%!]|[^\W_]{1}", re.UNICODE)
ADDR_RE = re.compile(r"[\w.+\-]+@([\w\-]+(?:\.[\w\-]+)+)", re.UNICODE)
RECEIVED_HOST_RE = re.compile(r"(?i)\b(?:from|by)\s+([a-z0-9][a-z0-9.\-]*\.[a-z]{2,})")
IP_RE = re.compile(r"\[(\d{1,3})\.(\d{1,3})\.\d{1,3}\.\d{1,3}\]")
# Chinese, Japanese and Korean scripts (kana, CJK ideographs, Hangul syllables).
CJK_RE = re.compile(r"([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]+)")
HTML_TAG_RE = re.compile(r"<\s*([a-zA-Z][a-zA-Z0-9]{0,15})([^>]{0,500})>")
HTML_ATTR_RE = re.compile(r"([a-zA-Z][a-zA-Z\-]{0,30})\s*=")
# Tokens of the message's form rather than its content (see is_form).
FORM_PREFIXES = ("html:", "content-type:", "charset:", "header:", "shape:", "attachments:",
                 "attachment:", "received:hops ")
PRESENCE_HEADERS = ("list-id", "list-unsubscribe", "in-reply-to", "references", "x-mailing-list",
                    "precedence", "mime-version", "organization")


def is_form(token: str) -> bool:
    """A token of the message's form (structure, markup, header presence), not of its content."""
    return token.startswith(FORM_PREFIXES) or token.endswith(":<none>")


def _cjk_bigrams(run: str) -> list[str]:
    """A run of Chinese, Japanese or Korean script as overlapping character pairs."""
    if len(run) == 1:
        return [run]
    return [run[i:i + 2] for i in range(len(run) - 1)]


def _words(text: str) -> list[str]:
    """Lower-cased words, with over-long runs replaced by skip tokens."""
    out = []
    for match in WORD_RE.finditer(text.lower()):
        word = match.group().strip(".-'!")
        if CJK_RE.search(word):
            # Written without spaces: a whole phrase would be one token, seen
            # once, never known. Character pairs recur, as words do elsewhere.
            for i, piece in enumerate(CJK_RE.split(word)):
                if i % 2:
                    out += _cjk_bigrams(piece)
                else:
                    out += _words(piece) if piece else []
            continue
        n = len(word)
        if n < MIN_WORD:
            continue
        if n > MAX_WORD:
            out.append(f"skip:{word[0]} {n // 10 * 10}")
            continue
        out.append(word)
    return out


def _domain_parents(host: str) -> list[str]:
    """a.b.example.com -> [a.b.example.com, b.example.com, example.com]."""
    labels = host.split(".")
    return [".".join(labels[i:]) for i in range(0, max(1, len(labels) - 1))]


def tokenize(msg: Message, max_tokens: int = 1000) -> list[str]:
    tokens: dict[str, None] = {}  # ordered set

    def add(token: str) -> None:
        if len(tokens) < max_tokens:
            tokens[token] = None

    # -- headers
    for word in _words(msg.subject):
        add("subject:" + word)
    if not msg.subject:
        add("subject:<none>")
    if msg.from_address:
        add("from:" + msg.from_address)
        add("from_domain:" + msg.from_domain)
    else:
        add("from:<none>")
    from_value = msg.header("From") or ""
    name = from_value.split("<", 1)[0].strip(' "').lower() if "<" in from_value else ""
    for word in _words(name):
        add("from_name:" + word)
    for header, label in (("Reply-To", "reply_to"), ("To", "to"), ("Cc", "cc"),
                          ("Message-ID", "message_id"), ("Return-Path", "return_path")):
        value = msg.header(header)
        if value is None:
            add(f"{label}:<none>")
            continue
        for domain in ADDR_RE.findall(value)[:5]:
            add(f"{label}_domain:{domain.lower()}")
    received = msg.header_all("Received")
    add(f"received:hops {min(len(received), 10)}")
    for value in received[:8]:
        for host in RECEIVED_HOST_RE.findall(value):
            for parent in _domain_parents(host.lower()):
                add("received:" + parent)
        for a, b in IP_RE.findall(value):
            add(f"received:ip {a}.{b}")
    for header in ("X-Mailer", "User-Agent"):
        value = msg.header(header)
        if value:
            add("x-mailer:" + " ".join(value.lower().split()[:3])[:60])
    for header in PRESENCE_HEADERS:
        add(f"header:{header}:{'yes' if msg.header(header) is not None else 'no'}")
    for part in msg.parts[:20]:
        add(f"content-type:{part.content_type}")
        if part.charset:
            add(f"charset:{part.charset.lower()}")
        if part.filename:
            ext = part.filename.rpartition(".")[2].lower()[:10]
            add(f"attachment:.{ext}")
    add(f"attachments:{min(len(msg.attachments), 5)}")
    if msg.html_parts and not msg.text_parts:
        add("shape:html-only")

    # -- URLs
    for url in msg.urls[:50]:
        host = re.sub(r"(?i)^(?:[a-z][a-z0-9+.\-]*://)?", "", url).split("/", 1)[0]
        host = host.rsplit("@", 1)[-1].split(":", 1)[0].strip(".").lower()
        if not host:
            continue
        for parent in _domain_parents(host):
            add("url:" + parent)
        add("url_tld:" + host.rpartition(".")[2])
        path = url.split("://", 1)[-1].partition("/")[2]
        segment = re.split(r"[/?#]", path, maxsplit=1)[0][:30].lower()
        if segment:
            add("url_path:" + segment)

    # -- HTML markup: which tags and attributes (font colours, hidden
    # images, forms) is evidence of its own, lost when rendered to text.
    for markup in msg.html_parts[:5]:
        for tag, attrs in HTML_TAG_RE.findall(markup[:MAX_BODY_CHARS]):
            tag = tag.lower()
            add("html:" + tag)
            for attr in HTML_ATTR_RE.findall(attrs):
                add(f"html:{tag}.{attr.lower()}")

    # -- body: the text parts, and the HTML as text (both when both exist:
    # spam often says different things in each).
    body = "\n".join([*msg.text_parts, msg.html_text])[:MAX_BODY_CHARS]
    previous = ""
    for word in _words(body):
        if len(tokens) >= max_tokens:
            break
        add(word)
        if previous:
            add(previous + " " + word)
        previous = word
    return list(tokens)
