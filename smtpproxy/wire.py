"""The SMTP wire codecs of the proxy, pure functions: MAIL/RCPT arguments, the DATA reader, dot-stuffing.

The client side (server.py) parses MAIL and RCPT arguments here and reads
DATA with ``read_data``; the downstream side (relay.py) writes DATA with
``dot_stuff``. Together they promise that no line a client sent can end DATA
early downstream (SMTP smuggling, tests/unit/test_smtp_smuggling.py): only
CRLF.CRLF ends a message read here, bare line ends become CRLF (or are
refused), and every line that starts with "." is stuffed on the way out.
"""

from __future__ import annotations

import asyncio
import re

from smtpproxy import replies
from smtpproxy.budget import Reservation

# End-of-data scanning: readuntil() stops at every line that ends in '.', and
# only a '.' line right after CRLF ends the message.
_DOT_LINE_END = b".\r\n"
_LINE_END = re.compile(rb"\r\n|\r|\n")


def parse_path(arg: str | None, keyword: str) -> tuple[str, list[str]] | None:
    """'FROM:<a@b> SIZE=10' -> ('a@b', ['SIZE=10']); None when malformed.

    Angle brackets may be omitted (Postfix is lenient too); a '>' inside a
    quoted local part does not end the path.
    """
    if arg is None or arg[: len(keyword)].upper() != keyword:
        return None
    rest = arg[len(keyword) :].lstrip()
    if not rest.startswith("<"):
        parts = rest.split()
        if not parts:
            return None
        return parts[0], parts[1:]
    if '"' in rest or "\\" in rest:
        end = _closing_bracket(rest)
    else:
        end = rest.find(">")  # the usual path: no quoting, the first '>' ends it
    if end < 0:
        return None
    address = rest[1:end]
    if ":" in address and address.startswith("@"):
        address = address.split(":", 1)[1]  # drop an RFC 821 source route
    return address, rest[end + 1 :].split()


def _closing_bracket(rest: str) -> int:
    """Where the '>' that ends a path with quoting or escapes is; -1 for none."""
    quoted = escaped = False
    for i, ch in enumerate(rest):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ">" and not quoted:
            return i
    return -1


# What no client-given value may hold (relay.py refuses to send CR or LF
# downstream, and no address, parameter or name has a use for any of them).
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


def has_control_characters(arg: str | None) -> bool:
    """C0 controls and DEL: nothing a host name, address, parameter, port or
    protocol holds, and what would let a value end a line of a header or of
    the SMTP dialogue (MAIL, RCPT, HELO, XFORWARD values)."""
    return arg is not None and _CONTROL_CHARACTERS.search(arg) is not None


# RFC 5321 4.1.2: esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-"), ASCII only.
_ESMTP_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


def params_valid(params: list[str]) -> bool:
    for param in params:
        key, eq, value = param.partition("=")
        if not _ESMTP_KEYWORD.fullmatch(key) or (eq and not value):
            return False
    return True



def crlf_only(content: bytes) -> bool:
    """True when every CR and every LF in ``content`` is part of a CRLF."""
    pairs = content.count(b"\r\n")
    return content.count(b"\n") == pairs and content.count(b"\r") == pairs


def normalize_line_ends(content: bytes) -> bytes:
    """Every bare CR and bare LF as CRLF (RFC 5321 2.3.8: line ends are CRLF only)."""
    return content if crlf_only(content) else _LINE_END.sub(b"\r\n", content)


def dot_stuff(content: bytes) -> bytes:
    """Message -> DATA payload including the final dot.

    Safe on its own, whatever ``content`` holds: every line end goes out as
    CRLF (a bare CR or LF becomes one) and every line that starts with "."
    gets a second one, so the only lone-dot line a downstream can find, also
    one that ends lines at a bare LF or CR, is the final one. The proxy's
    messages have CRLF line ends already (read_data, above, normalises
    them), so this changes nothing but the dots of a message it received.
    """
    stuffed = normalize_line_ends(content).replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    if stuffed and not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"


class BareNewline(ValueError):
    """A message line ended by a bare LF or CR, with proxy.bare_newline = "reject"."""

    def __init__(self, char: str):
        super().__init__(f"bare <{char}> received")
        self.reply = replies.BARE_LF if char == "LF" else replies.BARE_CR


def _bare_newline(data: bytes) -> str | None:
    """"LF" or "CR" when ``data`` holds one that is not part of a CRLF, else None."""
    pairs = data.count(b"\r\n")
    if data.count(b"\n") != pairs:
        return "LF"
    if data.count(b"\r") != pairs:
        return "CR"
    return None


async def read_data(reader: asyncio.StreamReader, limit: int, reservation: Reservation | None = None,
                    bare_newline: str = "normalize") -> tuple[bytes | None, int]:
    """Read a DATA payload up to the lone dot, normalise line ends, undo dot-stuffing.

    Returns (content, size); content is None when the message was larger than
    ``limit`` or ``reservation`` (the in-flight budget) refused its bytes: it
    is still read to its end, then discarded. Only CRLF.CRLF ends the
    message: a dot after a bare LF or CR does not (no SMTP smuggling).

    A bare LF or bare CR ends a line as CRLF does ("normalize", as Postfix
    3.9's smtpd_forbid_bare_newline), so the scan sees the lines the
    re-injection listener will see and nothing downstream can find an end of
    DATA in them; with "reject" it raises BareNewline instead. Dot-stuffing
    is undone after that, on every line. Lines of any length are accepted;
    Postfix sends long lines unsplit.
    """
    parts: list[bytes] = []
    size = 0
    keep = True
    tail = b"\r\n"  # the 354 reply counts as a line end before the first line
    while True:
        try:
            chunk = await reader.readuntil(_DOT_LINE_END)
            found = True
        except asyncio.LimitOverrunError as exc:
            chunk = await reader.read(exc.consumed)
            found = False
        except asyncio.IncompleteReadError as exc:
            raise ConnectionResetError("client closed the connection in DATA") from exc
        end = found and (tail + chunk)[-5:-3] == b"\r\n"
        if end:
            chunk = chunk[:-3]
        size += len(chunk)
        if keep and (size > limit or (reservation is not None and not reservation.take(len(chunk)))):
            keep = False
            parts.clear()
            if reservation is not None:
                reservation.release()  # nothing is held any more
        if keep:
            parts.append(chunk)
        if end:
            break
        tail = (tail + chunk)[-2:]
    if not keep:
        return None, size
    data = b"".join(parts)
    parts.clear()
    bare = _bare_newline(data)
    if bare is not None:
        if bare_newline == "reject":
            raise BareNewline(bare)
        data = normalize_line_ends(data)
    if data.startswith(b"."):
        data = data[1:]
    data = data.replace(b"\r\n.", b"\r\n")
    return data, len(data)
