"""Editing the header block of a raw message without touching anything else.

The body and every header we do not remove stay byte-for-byte as received;
this matters for DKIM signatures and for the "nothing changes but added
headers" promise of the proxy.
"""

from __future__ import annotations

import re


def header_block_end(content: bytes) -> int:
    """Offset just past the CRLF that ends the last header line (0: no headers)."""
    if content.startswith(b"\r\n"):
        return 0
    end = content.find(b"\r\n\r\n")
    return len(content) if end < 0 else end + 2


def remove_headers(content: bytes, names: list[str],
                   matching: list[tuple[str, re.Pattern[bytes]]] = ()) -> bytes:
    """Drop every field named in ``names`` (case-insensitive), with its folded
    lines, and every field named in ``matching`` whose unfolded value matches
    the pattern (e.g. Authentication-Results of our own authserv-id)."""
    if not names and not matching:
        return content
    wanted = {n.lower().encode() for n in names}
    conditional = [(n.lower().encode(), pattern) for n, pattern in matching]
    end = header_block_end(content)
    fields: list[list[bytes]] = []
    for line in content[:end].split(b"\r\n")[:-1] if end else []:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    kept = []
    for lines in fields:
        name, _, first = lines[0].partition(b":")
        name = name.strip().lower()
        if name in wanted:
            continue
        value = b" ".join([first, *lines[1:]]).strip()
        if any(name == n and pattern.search(value) for n, pattern in conditional):
            continue
        kept.extend(lines)
    head = b"".join(line + b"\r\n" for line in kept)
    return head + content[end:]


def prepend_headers(content: bytes, fields: list[tuple[str, str]]) -> bytes:
    """Put ``fields`` on top, in order; values must already be folded if long."""
    if not fields:
        return content
    head = "".join(f"{name}: {value}\r\n" for name, value in fields)
    return head.encode("utf-8") + content
