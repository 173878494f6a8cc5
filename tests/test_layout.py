"""The package's shape: no import cycles, and each layer imports only from the layers below it.

Imports are read from the source (every ``from . import``, also those inside functions), so
a deferred import cannot hide a cycle; those under ``if TYPE_CHECKING:`` never run, and do
not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "gradcheck_cli"

LAYERS = {
    "errors": 0,
    "core": 1,
    "engine": 2,
    "io.files": 2, "spec": 3, "io": 4,
    "results": 2,
    "analysis": 5, "commands": 6,
    "render": 7,
    "starter": 7, "api": 8, "cli": 8, "__main__": 9,
}
"""Who may import whom: a module imports only from layers numbered lower than its own (or its
own subpackage). ``io.files`` (atomic writes, bounded reads) sits below ``spec`` so that the
spec reader can read; ``io.data``/``io.resolve`` resolve a spec against its files above it."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Each module of the package -> the package modules it imports."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        found: set[str] = set()
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                       for n in ast.walk(block)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or id(node) in typing_only:
                continue
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("gradcheck_cli"):
                target = node.module
            else:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                is_module = (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists() or \
                    (PACKAGE.parent / sub.replace(".", "/") / "__init__.py").exists()
                found.add(sub if is_module else target)
        graph[name] = {m for m in found if m != name}
    return graph


def with_parents(names: set[str]) -> set[str]:
    """Importing ``a.b.c`` runs ``a.b`` too."""
    return {".".join(n.split(".")[:i]) for n in names for i in range(2, n.count(".") + 2)}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in with_parents(graph[v]) - {v}:
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                found.append(sorted([v, *component]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer(module: str) -> tuple[str, int] | None:
    parts = module.split(".")[1:]
    for i in range(len(parts), 0, -1):
        key = ".".join(parts[:i])
        if key in LAYERS:
            return key, LAYERS[key]
    return None


def test_the_graph_is_read():
    graph = imports()
    assert "gradcheck_cli.engine.backward" in graph["gradcheck_cli.analysis.measure"]
    assert "gradcheck_cli.core.model" in graph["gradcheck_cli.engine.forward"]
    # a deferred import (inside a function) counts
    assert "gradcheck_cli.io.weights" in graph["gradcheck_cli.analysis.analyze"]


def test_no_import_cycles():
    assert cycles(imports()) == []


def test_cycles_are_found():
    """The detector itself: a two-module loop and a loop through a package's __init__."""
    assert cycles({"p.a": {"p.b"}, "p.b": {"p.a"}}) == [["p.a", "p.b"]]
    assert cycles({"p.x": {"p.x.y"}, "p.x.y": set(), "p.z": {"p.x"}}) == []
    assert cycles({"p.x": {"p.z"}, "p.x.y": set(), "p.z": {"p.x.y"}}) == [["p.x", "p.z"]]


def test_each_layer_imports_only_from_below():
    wrong = []
    for module, targets in imports().items():
        here = layer(module)
        if here is None:
            continue
        for target in targets:
            there = layer(target)
            if there is None or there[0] == here[0] or target.startswith(module + "."):
                continue
            if there[1] >= here[1]:
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_the_core_knows_nothing_of_the_terminal():
    """core/ and engine/ are NumPy only: no click, rich, yaml or file I/O."""
    for path in [*(PACKAGE / "core").glob("*.py"), *(PACKAGE / "engine").glob("*.py")]:
        tree = ast.parse(path.read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                 for a in n.names}
        names |= {n.module.split(".")[0] for n in ast.walk(tree)
                  if isinstance(n, ast.ImportFrom) and n.module and not n.level}
        assert not names & {"click", "rich", "yaml", "os", "pathlib"}, path.name
