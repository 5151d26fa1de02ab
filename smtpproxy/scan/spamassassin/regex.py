"""Perl regular expressions (as SpamAssassin's rules write them) for Python and Hyperscan.

``split_match_op`` takes a rule's ``/.../flags`` or ``m{...}flags`` text
apart; ``translate`` turns the Perl source into two patterns over bytes
(SpamAssassin matches octets: UTF-8 text is UTF-8 bytes, ``\\w`` and ``/i``
are ASCII):

- ``python``: exact, for ``re`` (Python 3.11 has possessive quantifiers and
  atomic groups; named groups, ``\\z``, ``\\Z``, ``\\h``, ``\\v``, ``\\Q..\\E``,
  POSIX classes and mid-pattern ``(?i)`` are rewritten);
- ``hyperscan``: a *superset* for a prefilter scan over several texts joined
  by newlines: ``\\A``/``\\z``/``\\Z`` become line anchors, atomic groups and
  possessive quantifiers plain ones. Whatever Hyperscan reports is confirmed
  with the exact ``re`` pattern, so the superset only has to never miss.

Anything Python cannot take raises Untranslatable with the reason; the rule
is then skipped and counted (``configtest`` lists it).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

# Delimiters SpamAssassin accepts after ``m`` (any non-word character).
_PAIRS = {"{": "}", "(": ")", "[": "]", "<": ">"}
PERL_FLAGS = "imsxo"

POSIX_CLASSES = {
    "alpha": "a-zA-Z", "digit": "0-9", "alnum": "a-zA-Z0-9", "upper": "A-Z", "lower": "a-z",
    "space": " \\t\\n\\r\\f\\v", "blank": " \\t", "xdigit": "0-9A-Fa-f", "word": "\\w",
    "punct": "!-/:-@\\[-`{-~", "cntrl": "\\x00-\\x1f\\x7f", "print": "\\x20-\\x7e",
    "graph": "\\x21-\\x7e",
}
# Perl escapes with no Python equivalent, as a class body (bytes semantics).
_HSPACE = "\\t \\xa0"
_VSPACE = "\\n\\x0b\\f\\r\\x85"
_SIMPLE_ESCAPES = set("dDwWsSbBntrfaAz0123456789xZ")


class Untranslatable(ValueError):
    """A Perl pattern Python cannot run; the message is the reason shown to administrators."""


@dataclass(frozen=True)
class Translated:
    python: bytes
    flags: int  # re flags
    hyperscan: bytes
    caseless: bool
    dotall: bool
    multiline: bool


def split_match_op(text: str) -> tuple[str, str]:
    """``/foo/i`` or ``m{foo}i`` -> ("foo", "i"); raises Untranslatable when malformed."""
    text = text.strip()
    if text.startswith("m") and len(text) > 1 and not text[1].isalnum() and not text[1].isspace():
        opener, body = text[1], text[2:]
    elif text.startswith("/"):
        opener, body = "/", text[1:]
    else:
        raise Untranslatable(f"not a /regex/: {text[:40]!r}")
    closer = _PAIRS.get(opener, opener)
    depth, i = 0, 0
    while i < len(body):
        c = body[i]
        if c == "\\":
            i += 2
            continue
        if opener != closer and c == opener:
            depth += 1
        elif c == closer:
            if depth == 0:
                flags = body[i + 1:].strip()
                if any(f not in PERL_FLAGS + "g" for f in flags):
                    raise Untranslatable(f"unknown regex flags {flags!r}")
                return body[:i], flags
            depth -= 1
        i += 1
    raise Untranslatable("unterminated regex")


def _flag_group(text: str, i: int) -> tuple[str, str, int] | None:
    """At ``(?`` : (on-flags, off-flags, end index past ``)`` or ``:``) for flag groups."""
    m = re.compile(r"\(\?\^?([a-zA-Z]*)(?:-([a-zA-Z]*))?([:)])").match(text, i)
    if m is None:
        return None
    return m.group(1), (m.group(2) or ""), m.end() - 1


def translate(source: str, flags: str = "") -> Translated:
    """Translate Perl regex ``source`` (a latin-1 string: one char per octet) with ``flags``."""
    py: list[str] = []
    hs: list[str] = []
    # Mid-pattern "(?i)": Python wants global flags first, so the rest of the
    # enclosing group becomes "(?i:...)"; closers pending per group depth.
    extra_close: list[list[str]] = [[]]
    i, n = 0, len(source)
    in_class = False
    class_start = 0
    at_start = True  # nothing consumed yet at this group's start
    leading: list[str] = []  # global flags at the very start
    while i < n:
        c = source[i]
        if c == "\\":
            if i + 1 >= n:
                raise Untranslatable("trailing backslash")
            e = source[i + 1]
            i += 2
            if e == "Q":
                end = source.find("\\E", i)
                literal = source[i:] if end < 0 else source[i:end]
                i = n if end < 0 else end + 2
                esc = re.escape(literal)
                py.append(esc)
                hs.append(esc)
                at_start = False
                continue
            if e == "E":
                continue
            if e == "x" and i < n and source[i] == "{":
                end = source.find("}", i)
                if end < 0:
                    raise Untranslatable("unterminated \\x{...}")
                try:
                    code = int(source[i + 1:end] or "0", 16)
                except ValueError:
                    raise Untranslatable("bad \\x{...}") from None
                if code > 0xFF:
                    raise Untranslatable("\\x{...} above 0xFF (a character, not an octet)")
                py.append(f"\\x{code:02x}")
                hs.append(f"\\x{code:02x}")
                i = end + 1
            elif e == "z":
                py.append("\\Z")
                hs.append("$")
            elif e == "Z":
                py.append("(?=\\n?\\Z)")
                hs.append("$")
            elif e == "A":
                py.append("\\A")
                hs.append("^")
            elif e == "h":
                py.append(f"[{_HSPACE}]" if not in_class else _HSPACE)
                hs.append(f"[{_HSPACE}]" if not in_class else _HSPACE)
            elif e == "H":
                if in_class:
                    raise Untranslatable("\\H inside a character class")
                py.append(f"[^{_HSPACE}]")
                hs.append(f"[^{_HSPACE}]")
            elif e == "v":
                py.append(f"[{_VSPACE}]" if not in_class else _VSPACE)
                hs.append(f"[{_VSPACE}]" if not in_class else _VSPACE)
            elif e == "V":
                if in_class:
                    raise Untranslatable("\\V inside a character class")
                py.append(f"[^{_VSPACE}]")
                hs.append(f"[^{_VSPACE}]")
            elif e == "R" and not in_class:
                py.append(f"(?:\\r\\n|[{_VSPACE}])")
                hs.append(f"(?:\\r\\n|[{_VSPACE}])")
            elif e == "N" and not in_class and not (i < n and source[i] == "{"):
                py.append("[^\\n]")
                hs.append("[^\\n]")
            elif e == "e":
                py.append("\\x1b")
                hs.append("\\x1b")
            elif e == "k" and i < n and source[i] in "<{'":
                close = {"<": ">", "{": "}", "'": "'"}[source[i]]
                end = source.find(close, i + 1)
                if end < 0:
                    raise Untranslatable("unterminated \\k<name>")
                py.append(f"(?P={source[i + 1:end]})")
                hs.append(f"(?P={source[i + 1:end]})")
                i = end + 1
            elif e == "g":
                m = re.compile(r"\{?(\d+)\}?").match(source, i)
                if m is None:
                    raise Untranslatable("\\g with a relative or named reference")
                py.append(f"(?:\\{m.group(1)})")
                hs.append(f"(?:\\{m.group(1)})")
                i = m.end()
            elif e in "GKXCpPLlUuc" or (e == "N" and not in_class):
                raise Untranslatable(f"\\{e} has no Python equivalent")
            elif e.isalpha() and e not in _SIMPLE_ESCAPES:
                # Perl passes an unknown letter escape through as the letter.
                py.append(e)
                hs.append(e)
            elif e.isdigit() and e != "0" and not in_class:
                py.append("\\" + e)
                hs.append("\\" + e)
            else:
                py.append("\\" + e)
                hs.append("\\" + e)
            at_start = False
            continue
        if in_class:
            if c == "[" and source.startswith("[:", i):
                end = source.find(":]", i + 2)
                name = source[i + 2:end] if end > 0 else ""
                if name.startswith("^"):
                    raise Untranslatable(f"negated POSIX class [:{name}:]")
                if name not in POSIX_CLASSES:
                    raise Untranslatable(f"unknown POSIX class [:{name}:]")
                py.append(POSIX_CLASSES[name])
                hs.append(POSIX_CLASSES[name])
                i = end + 2
                continue
            if c == "]" and i > class_start:
                in_class = False
            elif c == "[":
                c = "\\["  # a literal in Perl; Python warns it may become a nested set
            elif c in "&~|-" and i + 1 < n and source[i + 1] == c:
                c = "\\" + c  # "&&" etc.: literal in Perl, set operations to come in Python
            py.append(c)
            hs.append(c)
            i += 1
            continue
        if c == "[":
            in_class = True
            j = i + 1
            if j < n and source[j] == "^":
                j += 1
            if j < n and source[j] == "]":  # a leading ] is a literal
                py.append(source[i:j] + "\\]")
                hs.append(source[i:j] + "\\]")
                i = j + 1
                class_start = i
                at_start = False
                continue
            class_start = j
            py.append(source[i:j])
            hs.append(source[i:j])
            i = j
            at_start = False
            continue
        if c == "(" and source.startswith("(?", i):
            if source.startswith("(?<", i) and i + 3 < n and source[i + 3] not in "=!":
                end = source.find(">", i)
                name = source[i + 3:end]
                py.append(f"(?P<{name}>")
                hs.append("(")
                i = end + 1
                extra_close.append([])
                at_start = True
                continue
            if source.startswith("(?P<", i):
                end = source.find(">", i)
                py.append(source[i:end + 1])
                hs.append("(")
                i = end + 1
                extra_close.append([])
                at_start = True
                continue
            if source.startswith("(?'", i):
                end = source.find("'", i + 3)
                py.append(f"(?P<{source[i + 3:end]}>")
                hs.append("(")
                i = end + 1
                extra_close.append([])
                at_start = True
                continue
            if source.startswith("(?>", i):
                py.append("(?>")
                hs.append("(?:")
                i += 3
                extra_close.append([])
                at_start = True
                continue
            if source.startswith("(?#", i):
                end = source.find(")", i)
                i = n if end < 0 else end + 1
                continue
            if source.startswith(("(?|", "(?R", "(?&", "(?(", "(?{", "(??{", "(?P>"), i) or (
                    i + 2 < n and (source[i + 2].isdigit() or source[i + 2] in "+-" and i + 3 < n
                                   and source[i + 3].isdigit())):
                raise Untranslatable("recursion, conditionals or branch reset")
            group = _flag_group(source, i)
            if group is not None:
                on, off, end = group
                if any(f not in "imsx" for f in on + off):
                    raise Untranslatable(f"inline flags {on}-{off}")
                if source[end] == ":":
                    text = f"(?{on}" + (f"-{off}" if off else "") + ":"
                    py.append(text if (on or off) else "(?:")
                    hs.append(text if (on or off) else "(?:")
                    extra_close.append([])
                    i = end + 1
                    at_start = True
                    continue
                # "(?i)": global flags.
                i = end + 1
                if not on and not off:
                    continue
                if at_start and len(extra_close) == 1 and not off and not py:
                    leading.append(on)
                    continue
                text = f"(?{on}" + (f"-{off}" if off else "") + ":"
                py.append(text)
                hs.append(text)
                extra_close[-1].append(text)
                continue
            # look-around and the rest go through as written
            m = re.compile(r"\(\?(?:<?[=!]|:)").match(source, i)
            if m is None:
                raise Untranslatable(f"unknown group {source[i:i + 4]!r}")
            py.append(m.group(0))
            hs.append(m.group(0))
            i = m.end()
            extra_close.append([])
            at_start = True
            continue
        if c == "(":
            extra_close.append([])
            py.append(c)
            hs.append(c)
            i += 1
            at_start = True
            continue
        if c == ")":
            if len(extra_close) > 1:
                closers = extra_close.pop()
                py.append(")" * len(closers))
                hs.append(")" * len(closers))
            py.append(c)
            hs.append(c)
            i += 1
            at_start = False
            continue
        if c in "*+?}" and i + 1 < n and source[i + 1] == "+" and py:
            # possessive quantifier: Python 3.11 has it; Hyperscan gets the plain one
            py.append(c + "+")
            hs.append(c)
            i += 2
            at_start = False
            continue
        if c == "|" and extra_close[-1]:
            # "(?i)" holds to the end of its group, across alternatives: close
            # the scoped group before "|" and open it again after.
            opened = "".join(extra_close[-1])
            py.append(")" * len(extra_close[-1]) + "|" + opened)
            hs.append(")" * len(extra_close[-1]) + "|" + opened)
            i += 1
            continue
        py.append(c)
        hs.append(c)
        i += 1
        at_start = False
    if in_class:
        raise Untranslatable("unterminated character class")
    closers = ")" * len(extra_close[0])
    flagset = set(flags) | set("".join(leading))
    py_flags = 0
    if "i" in flagset:
        py_flags |= re.IGNORECASE
    if "m" in flagset:
        py_flags |= re.MULTILINE
    if "s" in flagset:
        py_flags |= re.DOTALL
    if "x" in flagset:
        py_flags |= re.VERBOSE
    python = ("".join(py) + closers).encode("latin-1")
    hyper = ("".join(hs) + closers)
    if "x" in flagset:
        hyper = "(?x)" + hyper
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            re.compile(python, py_flags)
    except re.error as exc:
        raise Untranslatable(f"Python re: {exc}") from None
    except (RecursionError, OverflowError):
        raise Untranslatable("Python re: too complex") from None
    return Translated(python, py_flags, hyper.encode("latin-1"), "i" in flagset, "s" in flagset,
                      "m" in flagset)


def compile_python(t: Translated) -> re.Pattern[bytes]:
    return compile_source(t.python, t.flags)


def compile_source(python: bytes, flags: int) -> re.Pattern[bytes]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return re.compile(python, flags)


def relax_for_hyperscan(pattern: bytes) -> bytes:
    """A superset of ``pattern`` without what Hyperscan refuses: look-around
    groups are dropped (they consume nothing, so without them more matches),
    back-references become ``(?s:.*)`` (anything, including what the group
    matched)."""
    out = bytearray()
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        c = pattern[i:i + 1]
        if c == b"\\":
            nxt = pattern[i + 1:i + 2]
            if not in_class and nxt.isdigit() and nxt != b"0":
                out += b"(?s:.*)"
                i += 2
                continue
            out += pattern[i:i + 2]
            i += 2
            continue
        if in_class:
            if c == b"]":
                in_class = False
            out += c
            i += 1
            continue
        if c == b"[":
            in_class = True
            out += c
            i += 1
            if pattern[i:i + 1] == b"^":
                out += b"^"
                i += 1
            if pattern[i:i + 1] == b"]":
                out += b"]"
                i += 1
            continue
        if pattern.startswith((b"(?=", b"(?!", b"(?<=", b"(?<!"), i):
            i = _group_end(pattern, i)
            continue
        if pattern.startswith(b"(?P=", i):
            i = pattern.index(b")", i) + 1
            out += b"(?s:.*)"
            continue
        out += c
        i += 1
    return bytes(out)


def _group_end(pattern: bytes, i: int) -> int:
    """Index just past the group opening at ``i`` (balanced, escapes and classes skipped)."""
    depth, n, in_class = 0, len(pattern), False
    while i < n:
        c = pattern[i:i + 1]
        if c == b"\\":
            i += 2
            continue
        if in_class:
            if c == b"]":
                in_class = False
        elif c == b"[":
            in_class = True
            if pattern[i + 1:i + 2] == b"^":
                i += 1
            if pattern[i + 1:i + 2] == b"]":
                i += 1
        elif c == b"(":
            depth += 1
        elif c == b")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return n
