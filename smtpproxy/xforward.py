"""XFORWARD: Postfix's way to pass the real client's identity through a filter.

Pure codec functions (see Postfix XFORWARD_README). Values are xtext
(RFC 3461 section 4); ``[UNAVAILABLE]`` means "not known" and ``[TEMPUNAVAIL]``
(NAME only) "lookup failed temporarily"; an IPv6 ADDR carries an ``IPV6:``
prefix. The client may send several XFORWARD commands in one session, each
updating some attributes.
"""

from __future__ import annotations

import re

from smtpproxy.wire import has_control_characters

ATTRIBUTES = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE")
UNAVAILABLE = "[UNAVAILABLE]"
TEMPUNAVAIL = "[TEMPUNAVAIL]"
# Postfix splits XFORWARD so that each command line stays below this length.
MAX_COMMAND_LENGTH = 512


class XforwardError(ValueError):
    pass


class ControlCharacterError(XforwardError):
    """A decoded value holds a control character (xtext ``+0D+0A`` is CR LF)."""


def xtext_decode(text: str) -> str:
    """RFC 3461 xtext to text; raises XforwardError on a malformed +XX escape."""
    if "+" not in text:
        return text
    out = bytearray()
    i = 0
    raw = text.encode("utf-8", "surrogateescape")
    while i < len(raw):
        if raw[i] == 0x2B:  # '+'
            hexpair = raw[i + 1 : i + 3]
            try:
                if len(hexpair) != 2:
                    raise ValueError
                out.append(int(hexpair, 16))
            except ValueError:
                raise XforwardError(f"bad xtext escape in {text!r}") from None
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8", "surrogateescape")


# The characters xtext carries as they are: '!'..'~' except '+' and '='.
_XTEXT_AS_IS = re.compile(r"[!-*,-<>-~]*")


def xtext_encode(text: str) -> str:
    """Text to xtext: '+', '=' and bytes outside '!'..'~' become +XX."""
    if _XTEXT_AS_IS.fullmatch(text):
        return text  # the usual value (a name, an address): nothing to escape
    out = []
    for byte in text.encode("utf-8", "surrogateescape"):
        if 0x21 <= byte <= 0x7E and byte not in (0x2B, 0x3D):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)


def parse(arg: str) -> dict[str, str | None]:
    """One XFORWARD argument string to {ATTR: value}; None means unavailable.

    ADDR loses its ``IPV6:`` prefix. Unknown attribute names, missing '=' and
    bad escapes raise XforwardError (Postfix answers 501 for those too); a
    value with a control character raises ControlCharacterError: these values
    reach log lines and headers (SPF's smtp.helo), and no client text may
    start a new line in either.
    """
    if not arg or not arg.strip():
        raise XforwardError("no attributes")
    result: dict[str, str | None] = {}
    for item in arg.split():
        name, eq, raw_value = item.partition("=")
        name = name.upper()
        if not eq or name not in ATTRIBUTES:
            raise XforwardError(f"{item!r}")
        value = xtext_decode(raw_value)
        if has_control_characters(value):
            raise ControlCharacterError(f"{name}: control character")
        if value == UNAVAILABLE or value == "":
            result[name] = None
            continue
        if name == "ADDR" and value[:5].upper() == "IPV6:":
            value = value[5:]
        result[name] = value
    return result


def format_commands(
    attrs: dict[str, str | None], supported: set[str] | frozenset[str]
) -> list[str]:
    """XFORWARD command lines (without CRLF) carrying ``attrs`` to a server
    that announced ``supported`` attribute names; split like Postfix does."""
    items = []
    for name in ATTRIBUTES:
        if name not in attrs or name not in supported:
            continue
        value = attrs[name]
        if value is None:
            encoded = UNAVAILABLE
        else:
            if name == "ADDR" and ":" in value:
                value = "IPV6:" + value
            encoded = xtext_encode(value)
        items.append(f"{name}={encoded}")
    commands: list[str] = []
    current = "XFORWARD"
    for item in items:
        if current != "XFORWARD" and len(current) + 1 + len(item) > MAX_COMMAND_LENGTH:
            commands.append(current)
            current = "XFORWARD"
        current += " " + item
    if current != "XFORWARD":
        commands.append(current)
    return commands
