"""Guards on the layout of DESIGN.md: no import cycles, and policy/ stays small.

"``policy/`` imports only ``smtpproxy.common``, never aiosmtpd or dkimpy. No
two files import each other." These tests read the sources with ``ast`` (every
import statement, at module level or inside a function; imports under
``if TYPE_CHECKING:`` never run and do not count for cycles) and, for
``policy/``, also import the package in a fresh interpreter and look at
``sys.modules``.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("smtpproxy", "policy")

# ------------------------------------------------------------------ the import graph


@dataclass(frozen=True)
class Import:
    target: str   # a module of the project, or any dotted name for outside ones
    line: int
    type_only: bool  # under ``if TYPE_CHECKING:``


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the project's own packages, by dotted name."""
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            modules[module_name(path, root)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """(node, type_only) for every import statement, anywhere in the tree."""
    stack: list[tuple[ast.AST, bool]] = [(tree, False)]
    while stack:
        node, type_only = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, type_only
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend((child, True) for child in node.body)
            stack.extend((child, type_only) for child in node.orelse)
            continue
        stack.extend((child, type_only) for child in ast.iter_child_nodes(node))


def _package_of(module: str, is_package: bool) -> str:
    return module if is_package else module.rpartition(".")[0]


def file_imports(module: str, source: str, known: set[str], is_package: bool) -> list[Import]:
    """The modules that ``module`` imports.

    ``import a.b.c`` is an edge to ``a.b.c`` only (not to the __init__ of
    ``a`` or ``a.b``); ``from pkg import name`` is an edge to ``pkg.name``
    when that is a module of the project, else to ``pkg`` (its __init__).
    Relative imports are resolved against the importing module's package.
    """
    tree = ast.parse(source, filename=module)
    found: list[Import] = []
    for node, type_only in _import_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(alias.name, node.lineno, type_only))
            continue
        if node.level:
            base = _package_of(module, is_package)
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            pkg = f"{base}.{node.module}" if node.module else base
        else:
            pkg = node.module or ""
        for alias in node.names:
            candidate = f"{pkg}.{alias.name}"
            found.append(Import(candidate if candidate in known else pkg, node.lineno, type_only))
    return found


def import_graph(root: Path = ROOT) -> tuple[dict[str, set[str]], dict[tuple[str, str], int]]:
    """Module -> the project modules it imports at run time; and (a, b) -> a line."""
    modules = project_modules(root)
    known = set(modules)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    lines: dict[tuple[str, str], int] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for imp in file_imports(name, path.read_text(encoding="utf-8"), known, is_package):
            if imp.type_only or imp.target not in known or imp.target == name:
                continue
            graph[name].add(imp.target)
            lines.setdefault((name, imp.target), imp.line)
    return graph, lines


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative): every strongly connected component."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    nodes = set(graph) | {t for targets in graph.values() for t in targets}
    for start in sorted(nodes):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return components


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The components that hold a cycle (more than one module, or a self-import)."""
    return sorted(
        c for c in strongly_connected(graph)
        if len(c) > 1 or c[0] in graph.get(c[0], ())
    )


def _describe_cycle(component: list[str], graph, lines, modules) -> str:
    members = set(component)
    files = ", ".join(str(modules[m].relative_to(ROOT)) for m in component)
    edges = [
        f"    {modules[a].relative_to(ROOT)}:{lines[(a, b)]} imports {b}"
        for a in component for b in sorted(graph[a] & members)
    ]
    return f"  cycle between {files}\n" + "\n".join(edges)


# ------------------------------------------------------------------ the cycle finder itself


def test_cycle_finder_reports_a_cycle_and_only_it():
    graph = {
        "a": {"b"}, "b": {"c"}, "c": {"a", "d"},  # a -> b -> c -> a
        "d": {"e"}, "e": set(),                   # a chain hanging off it
        "x": {"y"}, "y": {"x"},                   # a two-module cycle
        "s": {"s"},                               # a module importing itself
    }
    assert import_cycles(graph) == [["a", "b", "c"], ["s"], ["x", "y"]]


def test_cycle_finder_passes_an_acyclic_graph():
    graph = {"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set(), "e": {"a"}}
    assert import_cycles(graph) == []
    assert sorted(map(tuple, strongly_connected(graph))) == [("a",), ("b",), ("c",), ("d",), ("e",)]


def test_import_resolution(tmp_path):
    """The graph's rules on a small tree: modules, packages, relative, TYPE_CHECKING."""
    files = {
        "smtpproxy/__init__.py": "",
        "smtpproxy/a.py": (
            "import smtpproxy.sub.b\n"            # the module only, not smtpproxy.sub
            "from smtpproxy.sub import c, NAME\n"  # c is a module; NAME lives in sub/__init__
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n"
            "    from smtpproxy import d\n"        # never runs: no edge
            "else:\n"
            "    import json\n"
            "def f():\n"
            "    from . import e\n"                # inside a function: counts
        ),
        "smtpproxy/d.py": "",
        "smtpproxy/e.py": "import smtpproxy.sub\n",  # the package itself: its __init__
        "smtpproxy/sub/__init__.py": "NAME = 1\n",
        "smtpproxy/sub/b.py": "from ..e import x\nfrom .c import y\n",
        "smtpproxy/sub/c.py": "",
        "policy/__init__.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph, _ = import_graph(tmp_path)
    assert graph == {
        "policy": set(),
        "smtpproxy": set(),
        "smtpproxy.a": {"smtpproxy.sub.b", "smtpproxy.sub.c", "smtpproxy.sub", "smtpproxy.e"},
        "smtpproxy.d": set(),
        "smtpproxy.e": {"smtpproxy.sub"},
        "smtpproxy.sub": set(),
        "smtpproxy.sub.b": {"smtpproxy.e", "smtpproxy.sub.c"},
        "smtpproxy.sub.c": set(),
    }
    assert import_cycles(graph) == []
    (tmp_path / "smtpproxy/sub/c.py").write_text("def g():\n    import smtpproxy.a\n")
    assert import_cycles(import_graph(tmp_path)[0]) == [["smtpproxy.a", "smtpproxy.sub.b", "smtpproxy.sub.c"]]


# ------------------------------------------------------------------ guard (a): no import cycle


def test_no_import_cycle_between_project_files():
    modules = project_modules()
    assert "smtpproxy.server" in modules and "policy" in modules, "the guard found no sources"
    graph, lines = import_graph()
    cycles = import_cycles(graph)
    assert not cycles, "files that import each other (DESIGN.md: no two files import each other):\n" + "\n".join(
        _describe_cycle(c, graph, lines, modules) for c in cycles)


# ------------------------------------------------------------------ guard (b): policy/ reaches only smtpproxy.common

FORBIDDEN = (
    "aiosmtpd", "aiosmtpd.*", "aiosmtplib", "aiosmtplib.*", "dkim", "dkim.*", "spf", "spf.*",
    "authres", "authres.*", "nacl", "nacl.*",
    "smtpproxy.scan*", "smtpproxy.sign*", "smtpproxy.server", "smtpproxy.relay",
    "smtpproxy.daemon", "smtpproxy.delivery", "smtpproxy.transaction",
)


def _offends(name: str) -> bool:
    if any(fnmatch.fnmatchcase(name, pattern) for pattern in FORBIDDEN):
        return True
    if name == "smtpproxy" or name == "smtpproxy.common" or name.startswith("smtpproxy.common."):
        return False
    return name.startswith("smtpproxy.")


def test_offends_table():
    """The rule itself, so that the two policy guards cannot pass by matching nothing."""
    allowed = ["smtpproxy", "smtpproxy.common", "smtpproxy.common.store.sqlite", "policy.server",
               "asyncio", "dkimx", "spfx"]
    refused = ["aiosmtpd", "aiosmtpd.smtp", "aiosmtplib", "dkim", "dkim.crypto", "spf", "authres",
               "nacl.signing", "smtpproxy.scan", "smtpproxy.scan.bayes.storage", "smtpproxy.sign.keys",
               "smtpproxy.server", "smtpproxy.relay", "smtpproxy.daemon", "smtpproxy.delivery",
               "smtpproxy.transaction", "smtpproxy.replies", "smtpproxy.cli", "smtpproxy.commonx"]
    assert [n for n in allowed if _offends(n)] == []
    assert [n for n in refused if not _offends(n)] == []


_IMPORT_ALL_POLICY = """
import importlib, json, pkgutil, sys
import policy
names = ["policy"] + sorted(m.name for m in pkgutil.walk_packages(policy.__path__, "policy."))
for name in names:
    importlib.import_module(name)
print(json.dumps({"imported": names, "loaded": sorted(sys.modules)}))
"""


def test_policy_loads_only_smtpproxy_common():
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL_POLICY], cwd=ROOT, capture_output=True, text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"importing the policy package failed:\n{proc.stderr}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"policy", "policy.cli", "policy.server"} <= set(result["imported"]), result["imported"]
    offending = [name for name in result["loaded"] if _offends(name)]
    assert not offending, (
        f"importing {', '.join(result['imported'])} loaded modules policy/ must not reach "
        f"(only smtpproxy.common is allowed): {', '.join(offending)}")


def test_policy_sources_import_only_smtpproxy_common():
    """Static: every import in policy/ (in functions and TYPE_CHECKING blocks too)."""
    modules = project_modules()
    known = set(modules)
    offending = []
    for name, path in modules.items():
        if not name.startswith("policy"):
            continue
        source = path.read_text(encoding="utf-8")
        for imp in file_imports(name, source, known, path.name == "__init__.py"):
            if _offends(imp.target):
                offending.append(f"{path.relative_to(ROOT)}:{imp.line} imports {imp.target}")
    assert not offending, "policy/ may import only smtpproxy.common:\n  " + "\n  ".join(offending)
