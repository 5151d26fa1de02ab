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
    out = {}
    for name, value in attrs.items():
        if value == "" or (value == "0" and name in NUMERIC_ATTRIBUTES):
            continue
        if name in XTEXT_ATTRIBUTES:
            value = xtext_decode(value)
        out[name] = value
    return out


class RequestParser:
    """Incremental request parser; one per connection."""

    __slots__ = ("max_line_bytes", "max_attributes", "_buf", "_attrs")

    def __init__(self, max_line_bytes: int = 4096, max_attributes: int = 100):
        self.max_line_bytes = max_line_bytes
        self.max_attributes = max_attributes
        self._buf = b""
        self._attrs: dict[str, str] = {}

    @property
    def pending(self) -> bool:
        """True while a request has started but is not complete."""
        return bool(self._buf or self._attrs)

    def feed(self, data: bytes) -> list[dict[str, str]]:
        """Consume bytes; return the requests they completed (normalised)."""
        buf = self._buf + data if self._buf else data
        done: list[dict[str, str]] = []
        start = 0
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            line = buf[start:end]
            start = end + 1
            if line.endswith(b"\r"):  # tolerate CRLF from hand-typed tests
                line = line[:-1]
            if len(line) > self.max_line_bytes:
                raise ProtocolError(f"line longer than {self.max_line_bytes} bytes")
            if not line:
                if not self._attrs:
                    raise ProtocolError("empty request")
                done.append(normalize(self._attrs))
                self._attrs = {}
                continue
            if b"\0" in line:
                raise ProtocolError("NUL byte in request")
            name, sep, value = line.partition(b"=")
            if not sep or not name:
                raise ProtocolError("line is not name=value")
            if len(self._attrs) >= self.max_attributes and name.decode("ascii", "replace") not in self._attrs:
                raise ProtocolError(f"more than {self.max_attributes} attributes")
            # Postfix passes SMTPUTF8 addresses as UTF-8; keep undecodable
            # bytes round-trippable rather than failing the request.
            self._attrs[name.decode("ascii", "replace")] = value.decode("utf-8", "surrogateescape")
        rest = buf[start:]
        if len(rest) > self.max_line_bytes:
            raise ProtocolError(f"line longer than {self.max_line_bytes} bytes")
        self._buf = rest
        return done


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
