"""Meta expressions (``meta NAME __A && (B || !C) && (__D + __E > 1)``), never the rule text evaluated.

``parse`` turns the text into a small tree once, at load; ``evaluate``
walks it with the values of the rules it names (a hit count: 0, 1, or more
for ``tflags multiple``); ``compile_node`` turns the tree into a Python
function for the per-message path. Names nobody defined are 0, as in SpamAssassin.

Grammar and precedence are Perl's, since SpamAssassin compiles metas to
Perl, from loosest to tightest: ``||``, ``&&``, ``== !=``,
``< <= > >=``, ``+ -``, ``* /``, unary ``! -``; parentheses, numbers and
rule names. Comparisons and ``!`` give 1 or 0; ``&&``/``||`` give the
deciding operand, as Perl does. ``if`` conditions in rule files reuse the
same tree (rules.py maps ``version``, ``plugin(...)`` and ``can(...)`` to
names).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

TOKEN_RE = re.compile(r"\s*(?:(\d+(?:\.\d*)?|\.\d+)|([A-Za-z_][A-Za-z0-9_:]*)|(&&|\|\||==|!=|<=|>=|[<>!+\-*/()]))")

# Binary operators: token -> precedence (higher binds tighter).
BINARY = {"||": 1, "&&": 2, "==": 3, "!=": 3, "<": 4, "<=": 4, ">": 4, ">=": 4,
          "+": 5, "-": 5, "*": 6, "/": 6}


# Deeper trees are refused at load: evaluating them recurses that deep.
MAX_DEPTH = 250


class MetaSyntaxError(ValueError):
    pass


@dataclass(frozen=True)
class Node:
    op: str  # "num", "name", "!", "neg", or a binary operator
    value: float | str = 0.0
    left: Node | None = None
    right: Node | None = None


def tokenize(text: str) -> list[str]:
    tokens, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = TOKEN_RE.match(text, pos)
        if m is None:
            raise MetaSyntaxError(f"unexpected {text[pos:pos + 10]!r}")
        tokens.append(m.group(1) or m.group(2) or m.group(3))
        pos = m.end()
    return tokens


class _Parser:
    def __init__(self, tokens: list[str]):
        self.tokens, self.pos = tokens, 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise MetaSyntaxError("unexpected end of expression")
        self.pos += 1
        return token

    def expression(self, min_prec: int = 1) -> Node:
        left = self.unary()
        while True:
            op = self.peek()
            prec = BINARY.get(op or "")
            if prec is None or prec < min_prec:
                return left
            self.take()
            left = Node(op, left=left, right=self.expression(prec + 1))

    def unary(self) -> Node:
        token = self.take()
        if token == "!":
            return Node("!", left=self.unary())
        if token == "-":
            return Node("neg", left=self.unary())
        if token == "+":
            return self.unary()
        if token == "(":
            node = self.expression()
            if self.take() != ")":
                raise MetaSyntaxError("missing )")
            return node
        if token[0].isdigit() or token[0] == ".":
            return Node("num", float(token))
        if token[0].isalpha() or token[0] == "_":
            return Node("name", token)
        raise MetaSyntaxError(f"unexpected {token!r}")


def parse(text: str) -> Node:
    tokens = tokenize(text)
    if not tokens:
        raise MetaSyntaxError("empty expression")
    parser = _Parser(tokens)
    try:
        node = parser.expression()
    except RecursionError:
        raise MetaSyntaxError("nested too deeply") from None
    if parser.peek() is not None:
        raise MetaSyntaxError(f"unexpected {parser.peek()!r}")
    if depth(node) > MAX_DEPTH:
        raise MetaSyntaxError(f"nested deeper than {MAX_DEPTH}")
    return node


def depth(node: Node) -> int:
    """How deep the tree is (a long chain of + is as deep as it is long), without recursion."""
    deepest, stack = 0, [(node, 1)]
    while stack:
        n, d = stack.pop()
        deepest = max(deepest, d)
        stack.extend((c, d + 1) for c in (n.left, n.right) if c is not None)
    return deepest


def names(node: Node) -> set[str]:
    """Every rule name the expression reads."""
    if node.op == "name":
        return {str(node.value)}
    found: set[str] = set()
    for child in (node.left, node.right):
        if child is not None:
            found |= names(child)
    return found


def evaluate(node: Node, values: Mapping[str, float]) -> float:
    """The expression's value; unknown names are 0, division by zero is 0."""
    op = node.op
    if op == "name":
        return values.get(node.value, 0)  # type: ignore[arg-type]
    if op == "num":
        return node.value  # type: ignore[return-value]
    if op == "!":
        return 0 if evaluate(node.left, values) else 1  # type: ignore[arg-type]
    if op == "neg":
        return -evaluate(node.left, values)  # type: ignore[arg-type]
    left = evaluate(node.left, values)  # type: ignore[arg-type]
    if op == "&&":
        return evaluate(node.right, values) if left else left  # type: ignore[arg-type]
    if op == "||":
        return left if left else evaluate(node.right, values)  # type: ignore[arg-type]
    right = evaluate(node.right, values)  # type: ignore[arg-type]
    return _ARITH[op](left, right)


_ARITH: dict[str, Callable[[float, float], float]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b if b else 0,
    "==": lambda a, b: 1 if a == b else 0,
    "!=": lambda a, b: 1 if a != b else 0,
    "<": lambda a, b: 1 if a < b else 0,
    "<=": lambda a, b: 1 if a <= b else 0,
    ">": lambda a, b: 1 if a > b else 0,
    ">=": lambda a, b: 1 if a >= b else 0,
}


def compile_node(node: Node) -> Callable[[Mapping[str, float]], float]:
    """``evaluate`` as one Python function: the same result, several times faster per message.

    The function's source is generated from the parsed tree, never from the
    rule's text: names go in as string literals, numbers as floats, and the
    operators as fixed Python forms (``and``/``or`` return the deciding
    operand, as Perl's ``&&``/``||`` do). A tree Python cannot compile (too
    deep) falls back to nested closures.
    """
    try:
        source = f"def meta(v):\n    g = v.get\n    return {_source(node)}\n"
        namespace: dict[str, object] = {"_div": _div}
        exec(compile(source, "<meta>", "exec"), namespace)  # noqa: S102 - generated, see above
        return namespace["meta"]  # type: ignore[return-value]
    except (RecursionError, MemoryError, SyntaxError):
        return _closures(node)


def _div(a: float, b: float) -> float:
    return a / b if b else 0


_COMPARE = {"==", "!=", "<", "<=", ">", ">="}


def _source(node: Node) -> str:
    """A Python expression equal to ``evaluate(node, v)``, with ``g = v.get``."""
    op = node.op
    if op == "name":
        return f"g({str(node.value)!r}, 0)"
    if op == "num":
        return repr(float(node.value))
    if op in ("&&", "||"):
        word = " and " if op == "&&" else " or "
        return "(" + word.join(_source(n) for n in _operands(node, op)) + ")"
    left = _source(node.left)  # type: ignore[arg-type]
    if op == "!":
        return f"(0 if {left} else 1)"
    if op == "neg":
        return f"(-{left})"
    right = _source(node.right)  # type: ignore[arg-type]
    if op == "/":
        return f"_div({left}, {right})"
    if op in _COMPARE:
        return f"(1 if {left} {op} {right} else 0)"
    if op in ("+", "-", "*"):
        return f"({left} {op} {right})"
    raise MetaSyntaxError(f"unknown operator {op!r}")


def _closures(node: Node) -> Callable[[Mapping[str, float]], float]:
    """``evaluate`` as nested closures (for trees too deep to compile as source)."""
    op = node.op
    if op == "name":
        name = str(node.value)
        return lambda v: v.get(name, 0)
    if op == "num":
        number = float(node.value)
        return lambda v: number
    if op in ("&&", "||"):
        # A chain "A && !B && !C ..." (most metas) is one loop, not nested closures.
        return _chain(op, [_closures(n) for n in _operands(node, op)])
    left = _closures(node.left)  # type: ignore[arg-type]
    if op == "!":
        return lambda v: 0 if left(v) else 1
    if op == "neg":
        return lambda v: -left(v)
    right = _closures(node.right)  # type: ignore[arg-type]
    fn = _ARITH[op]
    return lambda v: fn(left(v), right(v))


def _operands(node: Node, op: str) -> list[Node]:
    """The operands of a chain of ``op`` (left-nested as parsed), in order."""
    out: list[Node] = []
    stack = [node]
    while stack:
        n = stack.pop()
        if n.op == op:
            stack.append(n.right)  # type: ignore[arg-type]
            stack.append(n.left)  # type: ignore[arg-type]
        else:
            out.append(n)
    return out


def _chain(op: str, parts: list[Callable[[Mapping[str, float]], float]]) -> Callable[[Mapping[str, float]], float]:
    """Perl's && / ||: the first operand that decides, else the last one's value."""
    if op == "&&":
        def all_of(v: Mapping[str, float]) -> float:
            a: float = 1
            for part in parts:
                a = part(v)
                if not a:
                    return a
            return a
        return all_of

    def any_of(v: Mapping[str, float]) -> float:
        a: float = 0
        for part in parts:
            a = part(v)
            if a:
                return a
        return a
    return any_of
