"""DKIM signing (RFC 6376; ed25519-sha256 per RFC 8463) of one message, synchronously.

Contract: ``sign_message(message, keys, include, expire_s)`` returns the
DKIM-Signature header fields to put on top of the message (CRLF line ends,
one per key, in the order given), relaxed/relaxed, for a message read with
``parse(content)``. ``from_domains`` gives the From header's domains, so the
caller can refuse to sign mail that is not ours; ``already_signed`` tells
whether the message already carries a signature with a key's d= and s=, so
a message looping through us twice is not signed twice; ``header_list`` is
the h= list. Each listed header field is signed as many times as it occurs,
and the oversigned ones once more (RFC 6376 8.15), so nobody can add one
later without breaking the signature.

Parsing and relaxed canonicalisation are done here on bytes, as dkimpy does
them byte for byte (tests/unit/test_dkim_canon.py compares the two on the
corpora): dkimpy's line-by-line parser and canonicaliser cost about as much
CPU as the RSA signature itself, and signing must stay cheap next to
pass-through. The field is folded here too (``fold_tags``): dkimpy's fold
cuts a line at column 72 even inside a header name once h= outgrows a line
(a reply with In-Reply-To and References does), and the signature then fails.
RSA is signed by OpenSSL when available (keys.PrivateKey.sign), the key
parsed once when the tables load. ``gen_header`` assembles the ARC sets
(sign/arc.py), whose h= has spaces for dkimpy's fold to break at.
"""

from __future__ import annotations

import base64
import email.utils
import functools
import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import dkim
import dkim.util

from smtpproxy.sign.keys import PrivateKey
from smtpproxy.sign.tables import SigningKey

_LINE_END = re.compile(rb"\r?\n")
# A field starts at every line that does not start with WSP (RFC 5322 2.2.3).
_FIELD_START = re.compile(rb"\r\n(?![ \t])")
_NAME = re.compile(rb"([\x21-\x7e]+?):")  # dkimpy's field name: printable, up to the first colon
_NAME_BYTES = bytes(range(0x21, 0x7f))
# A WSP run that is not already one SP (replacing lone spaces too would only cost time).
_WSP_TO_SQUEEZE = re.compile(rb"\t[\t ]*| [\t ]+")
LINE_MAX = 76  # the signature field's lines, CRLF not counted (RFC 5322 2.1.1: at most 78)


@dataclass
class Message:
    """A message as dkimpy reads it: header fields (name, value with its folds and CRLF), body."""

    headers: list[tuple[bytes, bytes]]
    body: bytes  # CRLF line ends


def parse(content: bytes) -> Message:
    """``content`` split like dkimpy's rfc822_parse (a lone LF counts as CRLF; mbox "From " lines
    are skipped; any other line that is not a field raises dkim.MessageFormatError)."""
    if content.count(b"\n") != content.count(b"\r\n"):
        content = _LINE_END.sub(b"\r\n", content)  # Postfix hands us CRLF: rare
    if content.startswith(b"\r\n"):
        return Message([], content[2:])
    end = content.find(b"\r\n\r\n")
    if end >= 0:
        head, body = content[:end], content[end + 4:]
    else:
        head, body = content[:-2] if content.endswith(b"\r\n") else content, b""
    if not head:
        return Message([], body)
    headers = []
    for field in _FIELD_START.split(head):
        name, colon, value = field.partition(b":")
        if not (colon and name) or name.translate(None, _NAME_BYTES):
            return Message(_parse_lines(head), body)  # not a plain field: line by line, as dkimpy
        headers.append((name, value + b"\r\n"))
    return Message(headers, body)


def _parse_lines(head: bytes) -> list[tuple[bytes, bytes]]:
    headers: list[list[bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not headers:
                raise dkim.MessageFormatError("Unexpected folded line at the start of the header")
            headers[-1][1] += line + b"\r\n"
            continue
        match = _NAME.match(line)
        if match is not None:
            headers.append([match.group(1), line[match.end():] + b"\r\n"])
        elif not line.startswith(b"From "):
            raise dkim.MessageFormatError(f"Unexpected characters in RFC822 header: {line!r}")
    return [(name, value) for name, value in headers]


def canonical_body(body: bytes) -> bytes:
    """Relaxed body canonicalisation (RFC 6376 3.4.4), byte for byte as dkimpy's."""
    # Single-byte searches are memchr-fast; base64 parts often have no WSP at all.
    if b" " in body or b"\t" in body:
        if b" \r\n" in body or b"\t\r\n" in body:
            # WSP before each CRLF goes; after the last CRLF there is no line end (dkimpy
            # keeps it). Split and join: a third of the time of a regex trying every space.
            lines = body.split(b"\r\n")
            tail = lines.pop()
            body = b"\r\n".join([line.rstrip(b" \t") for line in lines]) + b"\r\n" + tail
        if b"\t" in body or b"  " in body:
            body = _WSP_TO_SQUEEZE.sub(b" ", body)
    if not body.endswith(b"\r\n"):
        body += b"\r\n"  # also an empty body: dkimpy hashes it as empty below
    else:
        end = len(body)
        while body.endswith(b"\r\n", 0, end - 2):  # empty lines at the end
            end -= 2
        body = body[:end]
    return b"" if body == b"\r\n" else body


def canonical_header(name: bytes, value: bytes) -> bytes:
    """One field, relaxed (RFC 6376 3.4.2), "name:value\\r\\n" as dkimpy's canonicalize_headers."""
    value = value.replace(b"\r\n", b"")  # no lone LF left: parse made them CRLF
    if b"\t" in value or b"  " in value:
        value = _WSP_TO_SQUEEZE.sub(b" ", value)
    return name.lower().rstrip() + b":" + value.strip() + b"\r\n"


def pick_headers(headers: Sequence[tuple[bytes, bytes]],
                 include: Sequence[bytes]) -> list[tuple[bytes, bytes]]:
    """The fields h= names, each instance taken bottom-up (RFC 6376 5.4.2), as dkimpy's
    select_headers: a name that no longer occurs picks nothing (the oversigned ones)."""
    positions: dict[bytes, list[int]] = {}
    for i, (name, _value) in enumerate(headers):
        positions.setdefault(name.lower(), []).append(i)
    picked = []
    for name in include:
        left = positions.get(name)
        if left:
            picked.append(headers[left.pop()])
    return picked


def header_values(message: Message, name: bytes) -> list[bytes]:
    return [value for field, value in message.headers if field.lower() == name]


def from_domains(message: Message) -> set[str] | None:
    """The From addresses' domains (lower case, A-labels); None when there is not exactly one From."""
    values = header_values(message, b"from")
    if len(values) != 1:
        return None
    text = values[0].decode("utf-8", "surrogateescape").replace("\r\n", "")
    domains = set()
    for _name, address in email.utils.getaddresses([text]):
        _local, at, domain = address.rpartition("@")
        if not at or not domain:
            return None
        domain = domain.strip().rstrip(".").lower()
        if not domain.isascii():
            try:
                domain = domain.encode("idna").decode("ascii")
            except UnicodeError:
                return None
        domains.add(domain)
    return domains or None


def already_signed(message: Message, key: SigningKey) -> bool:
    for value in header_values(message, b"dkim-signature"):
        try:
            tags = dkim.util.parse_tag_value(value)
        except Exception:
            continue
        if (tags.get(b"d", b"").strip().lower().decode("ascii", "replace") == key.domain
                and tags.get(b"s", b"").strip().lower().decode("ascii", "replace") == key.selector):
            return True
    return False


@functools.lru_cache(maxsize=16)
def _encoded(names: tuple[str, ...]) -> tuple[bytes, ...]:
    return tuple(dict.fromkeys(n.lower().encode("ascii") for n in names))


def header_list(message: Message, headers: Sequence[str], oversign: Sequence[str]) -> list[bytes]:
    """h=: each listed field as often as it occurs, the oversigned ones once more."""
    present: dict[bytes, int] = {}
    for field, _value in message.headers:
        name = field.lower()
        present[name] = present.get(name, 0) + 1
    out: list[bytes] = []
    for name in _encoded(tuple(headers)):
        out += [name] * present.get(name, 0)
    out += _encoded(tuple(oversign))
    return out


def gen_header(message: Message | dkim.DomainSigner, fields: list[tuple[bytes, bytes]],
               include: list[bytes], header_name: bytes, key: PrivateKey,
               standardize: bool = False) -> bytes:
    """A signature field's value (after "Name:", CRLF-terminated), as dkimpy's DKIM.gen_header.

    ``fields`` ends with ("b", placeholder); the header fields in ``include``
    are picked from ``message.headers`` bottom-up (RFC 6376 5.4.2).
    ``standardize`` is the ValiMail suite's form: tags sorted, lower case, no folding.
    """
    if standardize:
        fields = sorted([(k, v.lower().replace(b" ", b"")) for k, v in fields if k != b"bh"]
                        + [(k, v.replace(b" ", b"")) for k, v in fields if k == b"bh"],
                        key=lambda kv: kv[0])
    value = b"; ".join(b"=".join(kv) for kv in fields)
    if not standardize:
        value = dkim.fold(value, namelen=len(header_name), linesep=b"\r\n")
    value = dkim.RE_BTAG.sub(b"\\1", value)  # the b= being computed is empty
    # The signature field itself is hashed last, without its CRLF (RFC 6376 3.7).
    signed = [canonical_header(n, v) for n, v in pick_headers(message.headers, include)]
    signed.append(canonical_header(header_name, b" " + value).rstrip())
    signature = base64.b64encode(key.sign(hashlib.sha256(b"".join(signed))))
    fields = [(k, signature if k == b"b" else v) for k, v in fields]
    value = b"; ".join(b"=".join(kv) for kv in fields) + b"\r\n"
    return value if standardize else dkim.fold(value, namelen=len(header_name), linesep=b"\r\n")


def fold_tags(name: bytes, tags: Sequence[tuple[bytes, bytes]]) -> bytes:
    """``name`` and its tags ("k=v;" each), folded before column LINE_MAX between tags and
    before the colons of h=, never inside a name (dkimpy's fold would: a broken h=)."""
    pieces = []
    for tag, value in tags:
        if tag == b"h":
            first, *rest = value.split(b":")
            pieces += [b"h=" + first] + [b":" + n for n in rest]
            pieces[-1] += b";"
        else:
            pieces.append(tag + b"=" + value + b";")
    out = [name, b":"]
    column = len(name) + 1
    for piece in pieces:
        space = b"" if piece.startswith(b":") else b" "
        if column + len(space) + len(piece) > LINE_MAX:
            out.append(b"\r\n ")
            column = 1
        else:
            out.append(space)
            column += len(space)
        out.append(piece)
        column += len(piece)
    return b"".join(out)


def sign_message(message: Message, keys: Sequence[SigningKey], include: list[bytes],
                 expire_s: int = 0, now: int | None = None) -> list[bytes]:
    """One DKIM-Signature field (name included, CRLF-terminated) per key."""
    timestamp = int(time.time()) if now is None else now
    # rsa-sha256 and ed25519-sha256 share the one body hash.
    body_hash = base64.b64encode(hashlib.sha256(canonical_body(message.body)).digest())
    signed_fields = b"".join(canonical_header(n, v)
                             for n, v in pick_headers(message.headers, include))
    fields_out = []
    for key in keys:
        tags = [
            (b"v", b"1"), (b"a", key.key.algorithm), (b"c", b"relaxed/relaxed"),
            (b"d", key.domain.encode("ascii")), (b"s", key.selector.encode("ascii")),
            (b"t", str(timestamp).encode("ascii")),
        ]
        if expire_s:
            tags.append((b"x", str(timestamp + expire_s).encode("ascii")))
        tags += [(b"h", b":".join(include)), (b"bh", body_hash)]
        # b= starts a line of its own; hashed empty, after the fields (RFC 6376 3.7),
        # canonicalised and without its CRLF, as a verifier will see it.
        field = fold_tags(b"DKIM-Signature", tags) + b"\r\n b="
        name, _, value = field.partition(b":")
        b_tag = b"b=" + base64.b64encode(key.key.sign(hashlib.sha256(
            signed_fields + canonical_header(name, value).rstrip())))
        fields_out.append(field[:-2] + b"\r\n ".join(
            b_tag[i:i + LINE_MAX - 1] for i in range(0, len(b_tag), LINE_MAX - 1)) + b"\r\n")
    return fields_out
