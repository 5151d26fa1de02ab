"""RE2 supersets of the costly rules: which texts ``re`` need not run on.

A few rules cost most of the check's time: the ReplaceTags expansions that
Hyperscan refuses (``__FILL_THIS_FORM_*``: patterns whose every part is
optional, so Python's backtracking ``re`` tries dozens of branches at each
position of each line and fails on almost all of them) and the 40-220 KB
alternations. RE2 (the ``google-re2`` module) runs them as automata in
linear time, 10-30 times faster. It is a filter, never the judge: each of
these rules is written in RE2's syntax as a superset of itself, RE2 picks
the texts it may match, and ``re`` still decides on those (usually a true
match, found at once). So the hits stay exactly ``re``'s.

The RE2 form is emitted from ``re``'s own parse tree (so after Perl's
syntax was translated, with ``/x`` and inline flags resolved):
look-around is dropped, atomic groups and possessive repeats become plain
ones, back-references become "anything", ``$`` outside ``/m`` becomes the
``/m`` one (it matches before any newline, not only the last), ``\\s``
keeps the vertical tab RE2's lacks; case folding is RE2's (it folds Latin-1
letters too: more, never less). RE2 caps nested counted repetitions: when it
refuses a form, large upper bounds are opened (``{3,100}`` -> ``{3,}``),
then every counted repetition, which only widens the superset. A rule RE2
still refuses keeps running with ``re`` alone, as without the module.
"""

from __future__ import annotations

import logging

try:  # Python 3.11+
    from re import _constants as C  # type: ignore[attr-defined]
    from re import _parser as P  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - older Pythons
    import sre_constants as C  # type: ignore[no-redef]
    import sre_parse as P  # type: ignore[no-redef]

try:  # optional: without it the costly rules run with re alone
    import re2
except ImportError:  # pragma: no cover - depends on the installation
    re2 = None

import re

logger = logging.getLogger("smtpproxy.scan")

# Upper bounds above these are opened in the second and third tries.
_CAPS = (None, 16, 0)
# Python's \s on bytes: RE2's \s lacks the vertical tab.
_SPACE = "\\t\\n\\x0b\\x0c\\r "
_CATEGORIES = {
    C.CATEGORY_DIGIT: ("0-9", False), C.CATEGORY_NOT_DIGIT: ("0-9", True),
    C.CATEGORY_WORD: ("0-9A-Za-z_", False), C.CATEGORY_NOT_WORD: ("0-9A-Za-z_", True),
    C.CATEGORY_SPACE: (_SPACE, False), C.CATEGORY_NOT_SPACE: (_SPACE, True),
}


class _Unsupported(Exception):
    pass


def _char(code: int) -> str:
    return f"\\x{code:02x}" if code <= 0xFF else f"\\x{{{code:x}}}"


class _Emitter:
    def __init__(self, cap: int | None):
        self.cap = cap  # None: keep counted repetitions; 0: open all; N: open bounds above N

    def seq(self, items, multiline: bool) -> str:
        return "".join(self.node(op, av, multiline) for op, av in items)

    def node(self, op, av, multiline: bool) -> str:
        if op is C.LITERAL:
            return _char(av)
        if op is C.NOT_LITERAL:
            return f"[^{_char(av)}]"
        if op is C.ANY:
            return "."
        if op is C.IN:
            return self.klass(av)
        if op is C.BRANCH:
            return "(?:" + "|".join(self.seq(b, multiline) for b in av[1]) + ")"
        if op is C.SUBPATTERN:
            _group, add, delete, sub = av
            flags = ""
            if add & re.IGNORECASE:
                flags += "i"
            if add & re.DOTALL:
                flags += "s"
            off = ""
            if delete & re.IGNORECASE:
                off += "i"
            if delete & re.DOTALL:
                off += "s"
            inner = multiline
            if add & re.MULTILINE:
                inner = True
            if delete & re.MULTILINE:
                inner = False
            spec = flags + ("-" + off if off else "")
            return f"(?{spec}:" + self.seq(sub, inner) + ")"
        if op is C.ATOMIC_GROUP:
            return "(?:" + self.seq(av, multiline) + ")"
        if op in (C.MAX_REPEAT, C.MIN_REPEAT, C.POSSESSIVE_REPEAT):
            lo, hi, sub = av
            body = "(?:" + self.seq(sub, multiline) + ")"
            lazy = "?" if op is C.MIN_REPEAT else ""
            return body + self.bounds(lo, hi) + lazy
        if op is C.AT:
            return {C.AT_BEGINNING: "(?m:^)" if multiline else "^",
                    C.AT_BEGINNING_STRING: "\\A",
                    C.AT_END: "(?m:$)",  # Python's non-/m $ also matches before a final \n
                    C.AT_END_STRING: "\\z",
                    C.AT_BOUNDARY: "\\b", C.AT_NON_BOUNDARY: "\\B"}.get(av) or self.fail(av)
        if op in (C.ASSERT, C.ASSERT_NOT):
            return ""  # consumes nothing: without it, more matches
        if op is C.GROUPREF:
            return "(?s:.*)"
        if op is C.GROUPREF_EXISTS:
            _group, yes, no = av
            return "(?:" + self.seq(yes, multiline) + "|" + (self.seq(no, multiline) if no else "") + ")"
        return self.fail(op)

    def bounds(self, lo: int, hi: int) -> str:
        if hi is C.MAXREPEAT or hi == C.MAXREPEAT:
            return "*" if lo == 0 else ("+" if lo == 1 else f"{{{lo},}}")
        if self.cap is not None and hi > self.cap:
            if self.cap == 0:
                return "*" if lo == 0 else "+"
            return "*" if lo == 0 else ("+" if lo == 1 else f"{{{min(lo, self.cap) or 1},}}")
        return f"{{{lo}}}" if lo == hi else f"{{{lo},{hi}}}"

    def klass(self, items) -> str:
        negate = False
        parts: list[str] = []
        negated_categories: list[str] = []
        for op, av in items:
            if op is C.NEGATE:
                negate = True
            elif op is C.LITERAL:
                parts.append(_char(av))
            elif op is C.RANGE:
                parts.append(f"{_char(av[0])}-{_char(av[1])}")
            elif op is C.CATEGORY:
                chars, neg = _CATEGORIES.get(av) or self.fail(av)
                if neg:
                    negated_categories.append(chars)
                else:
                    parts.append(chars)
            else:
                self.fail(op)
        if negated_categories:
            # [\S...] cannot be written as one RE2 class with the vertical tab
            # kept; as alternatives it is the same set.
            alts = [f"[^{chars}]" for chars in negated_categories]
            if parts:
                alts.append(f"[{'^' if negate else ''}{''.join(parts)}]")
            if negate:
                raise _Unsupported("negated class with a negated category")
            return "(?:" + "|".join(alts) + ")"
        if not parts:
            return "[^\\x00-\\xff]" if not negate else "[\\x00-\\xff]"
        return f"[{'^' if negate else ''}{''.join(parts)}]"

    def fail(self, what) -> str:
        raise _Unsupported(str(what))


def release_cache() -> None:
    """Empty google-re2's module cache of compiled regexes (its last 128).

    The filters belong to the matcher; held by that cache too, a reloaded rule
    set's filters (about 15 MB for the stock rules, mostly the parse trees RE2
    keeps of the 40-220 KB alternations) would outlive it."""
    if re2 is not None:
        re2.purge()


def superset(pattern: re.Pattern[bytes]):
    """An RE2 regex matching at least every text ``pattern`` matches, or None."""
    if re2 is None:
        return None
    try:
        tree = P.parse(pattern.pattern.decode("latin-1"), pattern.flags)
    except Exception:  # noqa: BLE001 - re compiled it, so this is unexpected; stay with re
        return None
    flags = tree.state.flags
    prefix = "".join(f for f, bit in (("i", re.IGNORECASE), ("s", re.DOTALL)) if flags & bit)
    options = re2.Options()
    options.encoding = re2.Options.Encoding.LATIN1
    # RE2's memory per regex, its DFA cache included (reset, not grown, when
    # full): 8 MB kept the speed of 32 MB on the corpus with a quarter of the
    # worst case (about 30 filters) and 7 MB less RSS after 1,500 messages.
    options.max_mem = 8 << 20
    options.log_errors = False
    for cap in _CAPS:
        try:
            body = _Emitter(cap).seq(tree, bool(flags & re.MULTILINE))
        except _Unsupported:
            return None
        source = (f"(?{prefix})" if prefix else "") + body
        try:
            return re2.compile(source.encode("latin-1"), options)
        except Exception:  # noqa: BLE001 - refused (repetition, size): try a wider form
            continue
    return None
