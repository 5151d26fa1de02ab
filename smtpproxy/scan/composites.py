"""Composite symbols: an expression over the other symbols yields a symbol of its own.

rspamd's composites (src/libserver/composites), same syntax and the same
removal rules:

- Expression: symbol names joined with ``&`` (``and``), ``|`` (``or``),
  ``!`` (``not``) and parentheses; ``!`` binds tighter than ``&``, ``&``
  tighter than ``|``. ``NAME[opt1,/regex/]`` matches NAME only when every
  listed option is among NAME's options (a ``/regex/`` searches them). A
  symbol counts as found whatever its score, 0 included. An atom may name
  another composite: composites are evaluated in dependency order, and a
  cycle is refused at start-up.
- Removal: when a composite fires, each symbol its expression matched
  (outside any ``!``) loses what the composite's policy says: ``remove_all``
  (default) its score and its place in the result, ``remove_weight`` its score
  only (it stays, scored 0), ``remove_symbol`` its place only (its score still
  counts), ``leave`` nothing. An atom's prefix narrows that: ``~NAME`` keeps
  the symbol (removes the score at most), ``-NAME`` keeps both, ``^NAME`` forces
  removal of both whatever other composites say. A symbol several composites
  matched loses its score only if none of them wants it kept, and its place
  likewise. Removal happens after every composite was evaluated, so one
  composite's removal never hides a symbol from another.

Expressions are parsed once, when the engine is built, into a small tree;
nothing is ever evaluated as code. Unknown symbol names are a ConfigError
naming ``scan.composites.NAME.expression``; a shipped default whose inputs are
not in the symbols table (a custom ``symbols_file``) is left out instead.
rspamd's group atoms (``g:NAME``) are refused: our symbols have no groups.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from smtpproxy.common.config import DEFAULT_COMPOSITES, CompositeRule, ConfigError

REMOVE_SYMBOL = 1
REMOVE_WEIGHT = 2
REMOVE_FORCED = 4
POLICY_ACTIONS = {
    "remove_all": REMOVE_SYMBOL | REMOVE_WEIGHT,
    "remove_symbol": REMOVE_SYMBOL,
    "remove_weight": REMOVE_WEIGHT,
    "leave": 0,
}
MAX_EXPRESSION_CHARS = 4096

_TOKEN_RE = re.compile(r"""
    \s*(?:
      (?P<op>[&|!()])
    | (?P<atom>[~^-]*(?:g[+-]?:)?[A-Za-z0-9_]+(?:\[[^\]]*\])?)
    )""", re.VERBOSE)
_WORD_OPS = {"and": "&", "or": "|", "not": "!"}


@dataclass(frozen=True)
class Atom:
    symbol: str
    prefix: str  # the removal modifiers written before the name: ~ - ^
    options: tuple[str | re.Pattern[str], ...] = ()


@dataclass(frozen=True)
class Not:
    operand: Node


@dataclass(frozen=True)
class And:
    operands: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    operands: tuple[Node, ...]


Node = Atom | Not | And | Or


class _Parser:
    """Recursive descent over the tokens: or := and ('|' and)*, and := not ('&' not)*,
    not := '!' not | '(' or ')' | atom."""

    def __init__(self, text: str, key: str):
        self.key = key
        self.tokens = self._tokenize(text)
        self.pos = 0

    def _tokenize(self, text: str) -> list[tuple[str, str]]:
        if len(text) > MAX_EXPRESSION_CHARS:
            raise ConfigError(self.key, f"longer than {MAX_EXPRESSION_CHARS} characters")
        tokens, pos = [], 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            match = _TOKEN_RE.match(text, pos)
            if match is None:
                raise ConfigError(self.key, f"cannot read {text[pos:].strip()[:30]!r}")
            if match.group("op"):
                tokens.append(("op", match.group("op")))
            else:
                word = match.group("atom")
                tokens.append(("op", _WORD_OPS[word.lower()]) if word.lower() in _WORD_OPS
                              else ("atom", word))
            pos = match.end()
        if not tokens:
            raise ConfigError(self.key, "empty expression")
        return tokens

    def parse(self) -> Node:
        node = self._or()
        if self.pos < len(self.tokens):
            raise ConfigError(self.key, f"unexpected {self.tokens[self.pos][1]!r}")
        return node

    def _peek(self) -> str | None:
        return self.tokens[self.pos][1] if self.pos < len(self.tokens) else None

    def _or(self) -> Node:
        operands = [self._and()]
        while self._peek() == "|":
            self.pos += 1
            operands.append(self._and())
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def _and(self) -> Node:
        operands = [self._not()]
        while self._peek() == "&":
            self.pos += 1
            operands.append(self._not())
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def _not(self) -> Node:
        if self.pos >= len(self.tokens):
            raise ConfigError(self.key, "the expression ends too early")
        kind, value = self.tokens[self.pos]
        self.pos += 1
        if value == "!" and kind == "op":
            return Not(self._not())
        if value == "(" and kind == "op":
            node = self._or()
            if self._peek() != ")":
                raise ConfigError(self.key, "a parenthesis is not closed")
            self.pos += 1
            return node
        if kind == "atom":
            return self._atom(value)
        raise ConfigError(self.key, f"unexpected {value!r}")

    def _atom(self, text: str) -> Atom:
        name, _, rest = text.partition("[")
        prefix = name[:len(name) - len(name.lstrip("~-^"))]
        name = name[len(prefix):]
        if name.startswith(("g:", "g+:", "g-:")):
            raise ConfigError(self.key, f"{name}: symbol groups are not supported")
        if not re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
            raise ConfigError(self.key, f"{name!r} is not a symbol name")
        options: list[str | re.Pattern[str]] = []
        for option in (rest[:-1].split(",") if rest else ()):
            option = option.strip()
            if len(option) > 1 and option.startswith("/") and option.endswith("/"):
                try:
                    options.append(re.compile(option[1:-1]))
                except re.error as exc:
                    raise ConfigError(self.key, f"{name}: bad regex {option}: {exc}") from None
            elif option:
                options.append(option)
        return Atom(name, prefix, tuple(options))


def parse_expression(text: str, key: str = "expression") -> Node:
    """The tree of ``text``; a ConfigError naming ``key`` when it is not an expression."""
    return _Parser(text, key).parse()


def atoms(node: Node) -> Iterable[Atom]:
    if isinstance(node, Atom):
        yield node
    elif isinstance(node, Not):
        yield from atoms(node.operand)
    else:
        for operand in node.operands:
            yield from atoms(operand)


@dataclass(frozen=True)
class Composite:
    name: str
    tree: Node
    policy: int  # REMOVE_* bits
    # The symbols the expression names: with none of them found, the answer
    # is the one over no symbols at all (``on_nothing``), known in advance.
    names: frozenset[str] = frozenset()
    on_nothing: bool = False
    # The expression as nested closures, short-circuiting: whether it holds.
    holds: Callable[[Mapping[str, tuple[str, ...]]], bool] = lambda present: False


@dataclass
class Outcome:
    """What the composites did to one message's symbols."""

    # composite -> the symbols its expression matched (its options)
    fired: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # symbol -> REMOVE_* bits that apply to it
    removals: dict[str, int] = field(default_factory=dict)


def effective_rules(configured: Mapping[str, CompositeRule]) -> dict[str, tuple[CompositeRule, bool]]:
    """The shipped composites with the configured ones over them: name -> (rule, shipped)."""
    rules = {name: (rule, True) for name, rule in DEFAULT_COMPOSITES.items()}
    for name, rule in configured.items():
        rules[name] = (rule, False)
    return {name: entry for name, entry in rules.items() if entry[0].enabled}


class Composites:
    """The composites of one configuration, parsed and ordered; ``apply`` runs them."""

    def __init__(self, rules: Mapping[str, tuple[CompositeRule, bool]], known: Iterable[str]):
        known = set(known)
        parsed: dict[str, Composite] = {}
        for name, (rule, _shipped) in rules.items():
            key = f"scan.composites.{name}.expression"
            tree = parse_expression(rule.expression, key)
            parsed[name] = Composite(name, tree, POLICY_ACTIONS[rule.policy],
                                     frozenset(a.symbol for a in atoms(tree)),
                                     _evaluate(tree, {}, [], 0, False), _closure(tree))
        # A shipped default whose inputs this symbols table lacks is left out
        # (and so is one that needs it); a configured one naming them is an error.
        while True:
            dropped = False
            for name, (_rule, shipped) in rules.items():
                if name not in parsed:
                    continue
                unknown = sorted({a.symbol for a in atoms(parsed[name].tree)} - known - set(parsed))
                if unknown and shipped:
                    del parsed[name]
                    dropped = True
                elif unknown:
                    raise ConfigError(f"scan.composites.{name}.expression",
                                      f"unknown symbol {', '.join(unknown)}")
            if not dropped:
                break
        self.order = _ordered(parsed)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.order]

    def apply(self, found: Mapping[str, tuple[str, ...]]) -> Outcome:
        """Evaluate every composite over ``found`` (symbol -> options); the ones
        that fire, and what each matched symbol is to lose."""
        present = dict(found)
        outcome = Outcome()
        requests: dict[str, list[int]] = {}
        for composite in self.order:
            if composite.name in present:
                continue
            if composite.names.isdisjoint(present):
                if not composite.on_nothing:
                    continue
            elif not composite.holds(present):
                continue
            # It fires: walk the whole tree for the symbols it matched.
            matched: list[tuple[str, int]] = []
            if _evaluate(composite.tree, present, matched, composite.policy, False):
                present[composite.name] = ()
                outcome.fired[composite.name] = tuple(dict.fromkeys(s for s, _ in matched))
                for symbol, action in matched:
                    requests.setdefault(symbol, []).append(action)
        for symbol, actions in requests.items():
            if any(action & REMOVE_FORCED for action in actions):
                outcome.removals[symbol] = REMOVE_SYMBOL | REMOVE_WEIGHT
                continue
            bits = REMOVE_SYMBOL | REMOVE_WEIGHT
            for action in actions:
                bits &= action
            if bits:
                outcome.removals[symbol] = bits
        return outcome


def _evaluate(node: Node, present: Mapping[str, tuple[str, ...]], matched: list[tuple[str, int]],
              policy: int, negated: bool) -> bool:
    """Whether ``node`` holds; every atom is evaluated (no short cut), as rspamd
    does, so that each matched symbol outside a negation is recorded for removal."""
    if isinstance(node, Atom):
        options = present.get(node.symbol)
        if options is None or not all(_has_option(options, want) for want in node.options):
            return False
        if not negated:
            matched.append((node.symbol, _action(policy, node.prefix)))
        return True
    if isinstance(node, Not):
        return not _evaluate(node.operand, present, matched, policy, True)
    results = [_evaluate(operand, present, matched, policy, negated) for operand in node.operands]
    return all(results) if isinstance(node, And) else any(results)


def _closure(node: Node) -> Callable[[Mapping[str, tuple[str, ...]]], bool]:
    """``node`` as a function of the symbols found, stopping at the first answer."""
    if isinstance(node, Atom):
        name, wanted = node.symbol, node.options
        if not wanted:
            return lambda present: name in present
        return lambda present: name in present and all(
            _has_option(present[name], want) for want in wanted)
    if isinstance(node, Not):
        inner = _closure(node.operand)
        return lambda present: not inner(present)
    parts = tuple(_closure(operand) for operand in node.operands)
    if isinstance(node, And):
        return lambda present: all(part(present) for part in parts)
    return lambda present: any(part(present) for part in parts)


def _has_option(options: tuple[str, ...], want: str | re.Pattern[str]) -> bool:
    if isinstance(want, str):
        return want in options
    return any(want.search(option) for option in options)


def _action(policy: int, prefix: str) -> int:
    action = policy
    for mark in prefix:
        if mark == "~":
            action &= ~REMOVE_SYMBOL
        elif mark == "-":
            action &= ~(REMOVE_SYMBOL | REMOVE_WEIGHT)
        elif mark == "^":
            action |= REMOVE_FORCED
    return action


def _ordered(parsed: Mapping[str, Composite]) -> list[Composite]:
    """The composites with each after those it names; a cycle is a ConfigError."""
    order: list[Composite] = []
    state: dict[str, int] = {}  # 1: being visited, 2: done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = " -> ".join([*path[path.index(name):], name])
            raise ConfigError(f"scan.composites.{name}.expression", f"composites form a cycle: {cycle}")
        state[name] = 1
        for atom in atoms(parsed[name].tree):
            if atom.symbol in parsed:
                visit(atom.symbol, [*path, name])
        state[name] = 2
        order.append(parsed[name])

    for name in parsed:
        visit(name, [])
    return order
