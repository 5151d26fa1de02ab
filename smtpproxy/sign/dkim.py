"""DKIM signing (RFC 6376; ed25519-sha256 per RFC 8463) of one message, synchronously.

Contract: ``sign_message(content, keys, headers, oversign, expire_s)`` returns
the DKIM-Signature header fields to put on top of ``content`` (CRLF line
ends, one per key, in the order given), relaxed/relaxed. ``from_domains``
gives the From header's domains, so the caller can refuse to sign mail that
is not ours; ``already_signed`` tells whether the message already carries a
signature with a key's d= and s=, so a message looping through us twice is
not signed twice.

dkimpy does the canonicalisation; its own ``sign`` has no ``x=``, parses the
key on every call and signs RSA in pure Python, so the field is assembled
here (``gen_header``) from dkimpy's parts, the key parsed once when the
tables load and RSA signed by OpenSSL when available (keys.PrivateKey.sign). Each listed
header field is signed as many times as it occurs, and the oversigned ones
once more (RFC 6376 8.15), so nobody can add one later without breaking the
signature. Runs in a worker thread: this is CPU work.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import logging
import time
from collections.abc import Sequence

import dkim
import dkim.util
from dkim.canonicalization import CanonicalizationPolicy

from smtpproxy.sign.keys import PrivateKey
from smtpproxy.sign.tables import SigningKey

_quiet = logging.getLogger("smtpproxy.sign.dkimpy")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False

_RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")


def parse(content: bytes) -> dkim.DKIM:
    return dkim.DKIM(content, logger=_quiet)


def header_values(message: dkim.DKIM, name: bytes) -> list[bytes]:
    return [value for field, value in message.headers if field.lower() == name]


def from_domains(message: dkim.DKIM) -> set[str] | None:
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


def already_signed(message: dkim.DKIM, key: SigningKey) -> bool:
    for value in header_values(message, b"dkim-signature"):
        try:
            tags = dkim.util.parse_tag_value(value)
        except Exception:
            continue
        if (tags.get(b"d", b"").strip().lower().decode("ascii", "replace") == key.domain
                and tags.get(b"s", b"").strip().lower().decode("ascii", "replace") == key.selector):
            return True
    return False


def header_list(message: dkim.DKIM, headers: Sequence[str], oversign: Sequence[str]) -> list[bytes]:
    """h=: each listed field as often as it occurs, the oversigned ones once more."""
    present: dict[bytes, int] = {}
    for field, _value in message.headers:
        present[field.lower()] = present.get(field.lower(), 0) + 1
    out: list[bytes] = []
    for name in dict.fromkeys(h.lower().encode("ascii") for h in headers):
        out += [name] * present.get(name, 0)
    for name in dict.fromkeys(h.lower().encode("ascii") for h in oversign):
        out.append(name)
    return out


def gen_header(message: dkim.DKIM, fields: list[tuple[bytes, bytes]], include: list[bytes],
               header_name: bytes, key: PrivateKey, standardize: bool = False) -> bytes:
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
    h = hashlib.sha256()
    # Only the fields that can be picked are canonicalised (the same result, less work).
    wanted = set(include)
    picked = [(n, v) for n, v in message.headers if n.lower() in wanted]
    dkim.hash_headers(h, _RELAXED, _RELAXED.canonicalize_headers(picked), include,
                      (header_name, b" " + value), dict(fields))
    signature = base64.b64encode(key.sign(h))
    fields = [(k, signature if k == b"b" else v) for k, v in fields]
    value = b"; ".join(b"=".join(kv) for kv in fields) + b"\r\n"
    return value if standardize else dkim.fold(value, namelen=len(header_name), linesep=b"\r\n")


def sign_message(message: dkim.DKIM, keys: Sequence[SigningKey], include: list[bytes],
                 expire_s: int = 0, now: int | None = None) -> list[bytes]:
    """One DKIM-Signature field (name included, CRLF-terminated) per key."""
    timestamp = int(time.time()) if now is None else now
    body_hash = base64.b64encode(
        dkim.HASH_ALGORITHMS[b"rsa-sha256"](_RELAXED.canonicalize_body(message.body)).digest())
    fields_out = []
    for key in keys:
        algorithm = key.key.algorithm  # rsa-sha256 or ed25519-sha256: one body hash for both
        tags = [
            (b"v", b"1"), (b"a", algorithm), (b"c", b"relaxed/relaxed"),
            (b"d", key.domain.encode("ascii")), (b"s", key.selector.encode("ascii")),
            (b"t", str(timestamp).encode("ascii")),
        ]
        if expire_s:
            tags.append((b"x", str(timestamp + expire_s).encode("ascii")))
        tags += [(b"h", b":".join(include)), (b"bh", body_hash),
                 # b= on its own line, so folding after signing moves nothing else.
                 (b"b", b"0" * 60)]
        value = gen_header(message, tags, include, b"DKIM-Signature", key.key)
        fields_out.append(b"DKIM-Signature: " + value)
    return fields_out
