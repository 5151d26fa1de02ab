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
_SPLIT_LINES = re.compile(rb"(\r\n|\n|\r)")
# The line end before the next field: one not followed by folding space.
_FIELD_START = re.compile(rb"(?:\r\n|\n|\r(?!\n))(?=[^ \t])")
# A field's name and its colon (RFC 5322 ftext; space before the colon is obsolete syntax).
_NAMED_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")


def header_block_end(content: bytes) -> int:
    """Offset just past the line end that ends the last header line (0: no headers).

    The header block ends at the first empty line, whatever its line ends
    (CRLF, bare LF, bare CR): where a line end is followed by another. Found
    with bytes.find (a regex search over a 10 MB header would hold the GIL
    for a tenth of a second)."""
    if content[:1] in (b"\r", b"\n"):
        return 0
    found = [at for at in (content.find(pair) for pair in (b"\n\n", b"\n\r", b"\r\r")) if at >= 0]
    return min(found) + 1 if found else len(content)


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
    authserv-id, scan/results.py). Every other byte stays as it was.

    The named fields are looked for with bytes.find, not by splitting every
    field: a header of a million other fields costs a few scans in C, not a
    million Python steps on the event loop."""
    if not names and not matching:
        return content
    end = header_block_end(content)
    if not end:
        return content
    wanted = {n.lower().encode() for n in names}
    conditional: dict[bytes, list[Callable[[bytes], bool]]] = {}
    for n, claims in matching:
        conditional.setdefault(n.lower().encode(), []).append(claims)
    # A field starts at the block's start or after a line end; a name never
    # starts with space, so a folded line is never taken for a field.
    names_wanted = wanted | set(conditional)
    block = content[:end].lower()
    starts = set()
    for name in names_wanted:
        if block.startswith(name):
            starts.add(0)
        for eol in (b"\n", b"\r"):
            at = block.find(eol + name)
            while at >= 0:
                starts.add(at + 1)
                at = block.find(eol + name, at + 1)
    out, kept_from = [], 0
    for start in sorted(starts):
        found = _NAMED_FIELD.match(block, start)
        if start < kept_from or found is None or found.group(1) not in names_wanted:
            continue
        after = _FIELD_START.search(content, found.end())
        field_end = min(after.end(), end) if after else end
        name = found.group(1)
        if name in wanted or any(claims(content[found.end():field_end])
                                 for claims in conditional.get(name, ())):
            out.append(content[kept_from:found.start()])
            kept_from = field_end
    out.append(content[kept_from:])
    if kept_from < end == len(content) and content[-1:] not in (b"\r", b"\n"):
        out.append(b"\r\n")  # only headers, the last one unterminated: as split_fields has it
    return b"".join(out)


def prepend_headers(content: bytes, fields: list[tuple[str, str]]) -> bytes:
    """Put ``fields`` on top, in order; values must already be folded if long.

    Lines at the very top that start with a space or tab belong to no field
    (RFC 5322 2.2.3); below ours they would continue our last field, so a
    client could append to our Authentication-Results. They are dropped.
    """
    if not fields:
        return content
    while content[:1] in (b" ", b"\t"):
        end = EOL.search(content)
        content = b"" if end is None else content[end.end():]
    head = "".join(f"{name}: {value}\r\n" for name, value in fields)
    return head.encode("utf-8") + content

