"""The Postfix policy delegation protocol, as pure functions (SMTPD_POLICY_README).

A request is ``name=value`` lines ended by an empty line; the reply is one
``action=...`` line and an empty line. The parser is incremental: feed it
whatever the socket delivered (a whole request, several, or one byte) and it
returns the requests completed so far.

What it promises:
- attributes in any order; unknown names are kept (callers ignore them); a
  repeated name keeps the last value;
- an empty value, and ``0`` for the numeric attributes, read as absent
  (Postfix sends ``recipient_count=0`` at RCPT and ``size=0`` when unknown);
- ``ccert_subject`` and ``ccert_issuer`` are xtext (RFC 3461) and decoded;
- a line longer than ``max_line_bytes``, more than ``max_attributes``
  attributes, a line without ``=``, an empty request or a NUL byte raise
  ProtocolError: the caller logs it and closes the connection, never guesses.
"""

from __future__ import annotations

import re

# Attributes Postfix sends as numbers, with 0 meaning "not known".
NUMERIC_ATTRIBUTES = frozenset({
    "size", "recipient_count", "encryption_keysize", "client_port", "server_port",
})
# Attributes Postfix encodes as xtext.
XTEXT_ATTRIBUTES = frozenset({"ccert_subject", "ccert_issuer"})


class ProtocolError(ValueError):
    """The peer does not speak the policy protocol (or exceeds our limits)."""


_XTEXT_RE = re.compile(r"\+([0-9A-Fa-f]{2})")


def xtext_decode(text: str) -> str:
    """RFC 3461 xtext: '+' followed by two hex digits is that byte."""
    if "+" not in text:
        return text
    raw = _XTEXT_RE.sub(lambda m: chr(int(m.group(1), 16)), text)
    # Bytes above 0x7f came in as separate +XX escapes: reassemble UTF-8.
    try:
        return raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return raw


def xtext_encode(text: str) -> str:
    out = []
    for byte in text.encode("utf-8"):
        if 33 <= byte <= 126 and byte not in (ord("+"), ord("=")):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)


def normalize(attrs: dict[str, str]) -> dict[str, str]:
    """Drop absent values (empty, numeric 0) and decode xtext attributes."""
    out = {k: v for k, v in attrs.items() if v and (v != "0" or k not in NUMERIC_ATTRIBUTES)}
    for name in XTEXT_ATTRIBUTES:
        if name in out:
            out[name] = xtext_decode(out[name])
    return out


class RequestParser:
    """Incremental request parser; one per connection.

    Bytes are kept until a request is complete (an empty line), then the
    whole block is parsed in one go: cheaper than line by line, and the
    limits are enforced on the pending bytes so nothing grows unbounded.
    """

    __slots__ = ("max_line_bytes", "max_attributes", "_buf")

    def __init__(self, max_line_bytes: int = 4096, max_attributes: int = 100):
        self.max_line_bytes = max_line_bytes
        self.max_attributes = max_attributes
        self._buf = b""

    @property
    def pending(self) -> bool:
        """True while a request has started but is not complete."""
        return bool(self._buf)

    def feed(self, data: bytes) -> list[dict[str, str]]:
        """Consume bytes; return the requests they completed (normalised)."""
        # Tolerate CRLF from hand-typed tests. Only the new bytes are
        # normalised (the kept ones already were), so a split never changes
        # what a CR means; a CRLF split between two reads is one line end.
        if self._buf.endswith(b"\r") and data[:1] == b"\n":
            buf = self._buf[:-1] + data.replace(b"\r\n", b"\n")
        else:
            buf = self._buf + data.replace(b"\r\n", b"\n") if b"\r" in data else self._buf + data
        done: list[dict[str, str]] = []
        while True:
            if buf[:1] == b"\n":
                raise ProtocolError("empty request")
            end = buf.find(b"\n\n")
            if end < 0:
                break
            done.append(self._parse(buf[:end]))
            buf = buf[end + 2:]
        # Limits on the incomplete rest: every line kept, and the line count.
        if len(buf) > self.max_line_bytes and max(map(len, buf.split(b"\n"))) > self.max_line_bytes:
            raise ProtocolError(f"line longer than {self.max_line_bytes} bytes")
        if buf.count(b"\n") > self.max_attributes:
            raise ProtocolError(f"more than {self.max_attributes} attributes")
        self._buf = buf
        return done

    def _parse(self, block: bytes) -> dict[str, str]:
        if b"\0" in block:
            raise ProtocolError("NUL byte in request")
        if block.count(b"\n") >= self.max_attributes:
            raise ProtocolError(f"more than {self.max_attributes} attributes")
        # No line can be longer than the block: split only big blocks.
        if len(block) > self.max_line_bytes and max(map(len, block.split(b"\n"))) > self.max_line_bytes:
            raise ProtocolError(f"line longer than {self.max_line_bytes} bytes")
        # Postfix passes SMTPUTF8 addresses as UTF-8; keep undecodable bytes
        # round-trippable rather than failing the request.
        text = block.decode("utf-8", "surrogateescape")
        try:
            attrs = dict(line.split("=", 1) for line in text.split("\n"))
        except ValueError:
            raise ProtocolError("line is not name=value") from None
        if "" in attrs:
            raise ProtocolError("line is not name=value")
        return normalize(attrs)


_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def format_reply(action: str) -> bytes:
    """``action=...`` + empty line; control characters can never split it."""
    return b"action=" + _UNSAFE.sub(" ", action).encode("utf-8", "replace") + b"\n\n"


def format_request(attrs: dict[str, str]) -> bytes:
    """A request as Postfix would send it (tests, bench, admin tools)."""
    return "".join(f"{k}={v}\n" for k, v in attrs.items()).encode("utf-8", "surrogateescape") + b"\n"


def parse_reply(data: bytes) -> str | None:
    """The action of one complete reply, None when data is incomplete."""
    if not data.endswith(b"\n\n"):
        return None
    line = data[:-2].decode("utf-8", "replace")
    if not line.startswith("action="):
        raise ProtocolError(f"bad reply {line!r}")
    return line[len("action="):]
