"""The one header splitter: editing the header block of a raw message without touching anything else.

Used by the delivery pipeline (result headers), the scan (the Subject to
rewrite, the body to hash) and the signer (our Authentication-Results before
an ARC seal). The body and every header we do not remove stay byte-for-byte
as received; this matters for DKIM signatures and for the "nothing changes
but added headers" promise of the proxy.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# A line ends at CRLF, a bare LF or a bare CR: whatever a downstream or a mail
# client may take for a line end is one here, so a field cannot hide from
# removal behind a line end that only we would not see.
EOL = re.compile(rb"\r\n|\n|\r")
_BLANK_LINE = re.compile(rb"(?:\r\n|\n|\r(?!\n))(?:\r\n|\n|\r)")
_SPLIT_LINES = re.compile(rb"(\r\n|\n|\r)")


def header_block_end(content: bytes) -> int:
    """Offset just past the line end that ends the last header line (0: no headers).

    The header block ends at the first empty line, whatever its line ends
    (CRLF, bare LF, bare CR)."""
    if content[:1] in (b"\r", b"\n"):
        return 0
    found = _BLANK_LINE.search(content)
    if found is None:
        return len(content)
    return found.start() + (2 if content[found.start():found.start() + 2] == b"\r\n" else 1)


def split_fields(content: bytes) -> tuple[list[bytes], int]:
    """(header fields, offset where the header block ends): each field with its
    folded lines and their line ends, exactly as in ``content``.

    Lines end at CRLF, bare LF or bare CR (``EOL``); a line that starts with
    a space or a tab continues the field above. A header block without a
    final line end (a message that is only headers) gets a CRLF on its last
    field."""
    end = header_block_end(content)
    fields: list[bytes] = []
    if not end:
        return fields, 0
    block = content[:end]
    if block.count(b"\r") == block.count(b"\n") == block.count(b"\r\n"):
        # Only CRLF line ends (nearly every message): split in C.
        lines = [line + b"\r\n" for line in block.split(b"\r\n")]
        lines[-1] = lines[-1][:-2]
    else:
        pieces = _SPLIT_LINES.split(block)
        lines = [a + b for a, b in zip(pieces[::2], pieces[1::2], strict=False)] + [pieces[-1]]
    if not lines[-1]:
        lines.pop()
    elif EOL.search(lines[-1][-1:]) is None:
        lines[-1] += b"\r\n"
    for line in lines:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    return fields, end


def field_name(field: bytes) -> bytes:
    """The field's name, lower-cased, without surrounding space."""
    return field.partition(b":")[0].strip().lower()


def unfolded_value(field: bytes) -> bytes:
    """The field's value with its folds (any line end) joined by one space, stripped."""
    return EOL.sub(b" ", field.partition(b":")[2]).strip()


def remove_headers(content: bytes, names: list[str],
                   matching: list[tuple[str, Callable[[bytes], bool]]] = ()) -> bytes:
    """Drop every field named in ``names`` (case-insensitive), with its folded
    lines, and every field named in ``matching`` for whose value (folded, as
    received) the predicate is true (e.g. Authentication-Results of our own
    authserv-id, scan/results.py)."""
    if not names and not matching:
        return content
    wanted = {n.lower().encode() for n in names}
    conditional = [(n.lower().encode(), claims) for n, claims in matching]
    fields, end = split_fields(content)
    kept = []
    for field in fields:
        name = field_name(field)
        if name in wanted:
            continue
        if any(name == n and claims(field.partition(b":")[2]) for n, claims in conditional):
            continue
        kept.append(field)
    return b"".join(kept) + content[end:]


def prepend_headers(content: bytes, fields: list[tuple[str, str]]) -> bytes:
    """Put ``fields`` on top, in order; values must already be folded if long."""
    if not fields:
        return content
    head = "".join(f"{name}: {value}\r\n" for name, value in fields)
    return head.encode("utf-8") + content

