"""clrcore's modules import each other without circles, so each can be read (and loaded) before the ones
that use it. Every import counts: module level, inside functions, and under TYPE_CHECKING."""

from __future__ import annotations

import ast
from pathlib import Path

import clrcore

PACKAGE = Path(clrcore.__file__).parent


def _imported_modules(path: Path) -> set[str]:
    """The clrcore modules `path` imports anywhere in its body (`from clrcore import x` counts as x)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "clrcore":
                found |= {f"clrcore.{alias.name}" for alias in node.names}
    return {name for name in found if name.startswith("clrcore.")}


def import_graph() -> dict[str, set[str]]:
    """Module name to the clrcore modules it imports."""
    modules = {f"clrcore.{path.stem}": path for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
    return {name: _imported_modules(path) & modules.keys() - {name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None when the graph is acyclic (depth-first search)."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(graph.get(node, ())):
            cycle = visit(target)
            if cycle:
                return cycle
        path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start)
        if cycle:
            return cycle
    return None


def test_the_graph_sees_function_level_and_type_checking_imports() -> None:
    graph = import_graph()
    assert "clrcore.runs" in graph["clrcore.cli"]  # imported inside a function
    assert "clrcore.specs" in graph["clrcore.schedules"]  # imported under TYPE_CHECKING
    assert "clrcore.trainer" in graph["clrcore.runs"]  # an ordinary module-level import


def test_find_cycle_reports_a_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_clrcore_has_no_import_circles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])
