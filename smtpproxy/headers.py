"""The one header splitter: editing the header block of a raw message without touching anything else.

Used by the delivery pipeline (result headers), the scan (the Subject to
rewrite, the body to hash) and the signer (our Authentication-Results before
an ARC seal). The body and every header we do not remove stay byte-for-byte
as received; this matters for DKIM signatures and for the "nothing changes
but added headers" promise of the proxy.
"""

from __future__ import annotations

import re


def header_block_end(content: bytes) -> int:
    """Offset just past the CRLF that ends the last header line (0: no headers)."""
    if content.startswith(b"\r\n"):
        return 0
    end = content.find(b"\r\n\r\n")
    return len(content) if end < 0 else end + 2


def split_fields(content: bytes) -> tuple[list[bytes], int]:
    """(header fields, offset where the header block ends): each field with its
    folded lines and its final CRLF, exactly as in ``content``.

    A header block without a final CRLF (a message that is only headers)
    gets one on its last field."""
    end = header_block_end(content)
    fields: list[bytes] = []
    if not end:
        return fields, 0
    lines = content[:end].split(b"\r\n")
    if not lines[-1]:
        lines.pop()
    for line in lines:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line + b"\r\n"
        else:
            fields.append(line + b"\r\n")
    return fields, end


def field_name(field: bytes) -> bytes:
    """The field's name, lower-cased, without surrounding space."""
    return field.partition(b":")[0].strip().lower()


def unfolded_value(field: bytes) -> bytes:
    """The field's value with its folds joined by one space, stripped."""
    value = field.partition(b":")[2]
    return b" ".join(value.split(b"\r\n")).strip()


def remove_headers(content: bytes, names: list[str],
                   matching: list[tuple[str, re.Pattern[bytes]]] = ()) -> bytes:
    """Drop every field named in ``names`` (case-insensitive), with its folded
    lines, and every field named in ``matching`` whose unfolded value matches
    the pattern (e.g. Authentication-Results of our own authserv-id)."""
    if not names and not matching:
        return content
    wanted = {n.lower().encode() for n in names}
    conditional = [(n.lower().encode(), pattern) for n, pattern in matching]
    fields, end = split_fields(content)
    kept = []
    for field in fields:
        name = field_name(field)
        if name in wanted:
            continue
        if any(name == n and pattern.search(unfolded_value(field)) for n, pattern in conditional):
            continue
        kept.append(field)
    return b"".join(kept) + content[end:]


def prepend_headers(content: bytes, fields: list[tuple[str, str]]) -> bytes:
    """Put ``fields`` on top, in order; values must already be folded if long."""
    if not fields:
        return content
    head = "".join(f"{name}: {value}\r\n" for name, value in fields)
    return head.encode("utf-8") + content

