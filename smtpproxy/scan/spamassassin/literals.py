"""Required literals of a regex: strings one of which every match contains.

For the patterns Hyperscan refuses (too large, embedded anchors), as
SpamAssassin's Rule2XSBody and rspamd do: the pattern's parse tree (Python's
own ``re`` parser, so exactly what ``re`` runs) gives a set of literals such
that any match of the pattern contains at least one of them. Those literals
go into the Hyperscan database of the rule's type in its place; the exact
``re`` pattern then runs only on messages where one of them occurs, and
still decides.

Each node of the tree yields, as sets of byte strings (``{b""}``: nothing
known), ``exact`` (every string the node can match, when few: None
otherwise), ``prefix`` (every match starts with one), ``suffix`` (ends with
one) and ``req`` (contains one); a concatenation joins the left part's
suffixes with the right part's prefixes, which is how ``win+ing`` yields
``win`` and ``ning``. Case: when the pattern (or any group of it) is
caseless, the literals are lower-cased and matched caseless, a superset.
Anything the parser does not describe (a new opcode) gives "nothing known",
so the rule keeps running with ``re`` on every message.
"""

from __future__ import annotations

import re

try:  # Python 3.11+
    from re import _constants as C  # type: ignore[attr-defined]
    from re import _parser as P  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - older Pythons
    import sre_constants as C  # type: ignore[no-redef]
    import sre_parse as P  # type: ignore[no-redef]

# Most strings a set may hold before it is given up (products grow fast).
CAP = 256
# A character class of at most this many bytes is a set of literals.
CLASS_MAX = 8
# Literal sets whose shortest string is shorter than this are not worth a prefilter.
MIN_LENGTH = 3
# Most literals one rule may put into the database.
MAX_LITERALS = 4096

_NOTHING = frozenset({b""})


class _Info:
    __slots__ = ("exact", "prefix", "suffix", "req")

    def __init__(self, exact, prefix, suffix, req):
        self.exact, self.prefix, self.suffix, self.req = exact, prefix, suffix, req


def _exact(strings) -> _Info:
    s = frozenset(strings)
    return _Info(s, s, s, s)


_UNKNOWN = _Info(None, _NOTHING, _NOTHING, _NOTHING)
_EMPTY = _exact({b""})


def _score(s: frozenset) -> tuple[int, int]:
    """Better: longer shortest string, then fewer strings."""
    return (min((len(x) for x in s), default=0), -len(s))


def _best(*sets: frozenset) -> frozenset:
    return max(sets, key=_score)


def _product(a: frozenset, b: frozenset) -> frozenset | None:
    if len(a) * len(b) > CAP:
        return None
    return frozenset(x + y for x in a for y in b)


def _concat(a: _Info, b: _Info) -> _Info:
    if a.exact is not None and b.exact is not None:
        both = _product(a.exact, b.exact)
        if both is not None:
            return _exact(both)
    if a.exact is not None:
        prefix = _product(a.exact, b.prefix)
        prefix = prefix if prefix is not None else a.prefix
    else:
        prefix = a.prefix
    if b.exact is not None:
        suffix = _product(a.suffix, b.exact)
        suffix = suffix if suffix is not None else b.suffix
    else:
        suffix = b.suffix
    cross = _product(a.suffix, b.prefix)
    req = _best(a.req, b.req, *(() if cross is None else (cross,)), prefix, suffix)
    return _Info(None, prefix, suffix, req)


def _union(infos: list[_Info]) -> _Info:
    if all(i.exact is not None for i in infos):
        s = frozenset().union(*(i.exact for i in infos))
        if len(s) <= CAP * 4:
            return _exact(s)

    def u(sets) -> frozenset:
        out = frozenset().union(*sets)
        return out if b"" not in out else _NOTHING

    return _Info(None, u(i.prefix for i in infos), u(i.suffix for i in infos), u(i.req for i in infos))


def _seq(items, fold: bool) -> _Info:
    info = _EMPTY
    for op, av in items:
        info = _concat(info, _node(op, av, fold))
    return info


def _fold(c: int, fold: bool) -> int:
    return c + 32 if fold and 65 <= c <= 90 else c


def _node(op, av, fold: bool) -> _Info:
    if op is C.LITERAL:
        return _exact({bytes([_fold(av, fold)])})
    if op is C.IN:
        chars: set[int] = set()
        for iop, iav in av:
            if iop is C.LITERAL:
                chars.add(_fold(iav, fold))
            elif iop is C.RANGE and iav[1] - iav[0] < CLASS_MAX:
                chars.update(_fold(c, fold) for c in range(iav[0], iav[1] + 1))
            else:  # NEGATE, CATEGORY, wide ranges
                return _UNKNOWN
            if len(chars) > CLASS_MAX:
                return _UNKNOWN
        return _exact(bytes([c]) for c in chars) if chars else _UNKNOWN
    if op is C.SUBPATTERN:
        return _seq(av[-1], fold)
    if op is getattr(C, "ATOMIC_GROUP", None):
        return _seq(av, fold)
    if op is C.BRANCH:
        return _union([_seq(branch, fold) for branch in av[1]])
    if op in (C.MAX_REPEAT, C.MIN_REPEAT, getattr(C, "POSSESSIVE_REPEAT", None)):
        lo, hi, item = av
        inner = _seq(item, fold)
        if lo == 0:
            if hi == 1 and inner.exact is not None:
                return _exact(inner.exact | _NOTHING)
            return _EMPTY if hi == 0 else _Info(None, _NOTHING, _NOTHING, _NOTHING)
        if inner.exact is not None and lo == hi and len(inner.exact) ** lo <= CAP:
            out = _EMPTY
            for _ in range(lo):
                out = _concat(out, inner)
            return out
        return _Info(None, inner.prefix, inner.suffix, inner.req)
    if op in (C.AT, C.ASSERT, C.ASSERT_NOT):
        return _EMPTY  # zero width
    return _UNKNOWN  # ANY, NOT_LITERAL, CATEGORY, GROUPREF, GROUPREF_EXISTS, ...


def _caseless(items, flags: int) -> bool:
    if flags & re.IGNORECASE:
        return True
    for op, av in items:
        if op is C.SUBPATTERN:
            if av[1] & re.IGNORECASE or _caseless(av[-1], 0):
                return True
        elif op is getattr(C, "ATOMIC_GROUP", None):
            if _caseless(av, 0):
                return True
        elif op is C.BRANCH:
            if any(_caseless(b, 0) for b in av[1]):
                return True
        elif op in (C.MAX_REPEAT, C.MIN_REPEAT, getattr(C, "POSSESSIVE_REPEAT", None)):
            if _caseless(av[2], 0):
                return True
        elif op in (C.ASSERT, C.ASSERT_NOT):
            if _caseless(av[1], 0):
                return True
    return False


def required_literals(pattern: re.Pattern[bytes]) -> tuple[list[bytes], bool] | None:
    """``(literals, caseless)``: every match of ``pattern`` contains one of
    ``literals`` (lower-case when ``caseless``); None when no useful set is found."""
    try:
        tree = P.parse(pattern.pattern, pattern.flags & ~re.IGNORECASE)
        fold = _caseless(tree, pattern.flags | tree.state.flags)
        info = _seq(tree, fold)
    except Exception:  # anything unexpected: no prefilter, the rule runs every time
        return None
    best = _best(info.req, info.prefix, info.suffix, *(() if info.exact is None else (info.exact,)))
    if _score(best)[0] < MIN_LENGTH or len(best) > MAX_LITERALS:
        return None
    # A literal containing a shorter one adds nothing.
    ordered = sorted(best, key=len)
    kept: list[bytes] = []
    for lit in ordered:
        if not any(k in lit for k in kept):
            kept.append(lit)
    return kept, fold


def hyperscan_literal(lit: bytes) -> bytes:
    """``lit`` as a Hyperscan pattern matching exactly those bytes."""
    return b"".join(bytes([c]) if chr(c).isalnum() and c < 128 else b"\\x%02x" % c for c in lit)
