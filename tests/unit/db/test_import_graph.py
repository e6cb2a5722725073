"""The database modules import one another in one direction only (issue 14: the
engine.py <-> migrate.py circle is gone and stays gone): whatever both need lives
in connection.py and revisions.py, which import neither."""

from __future__ import annotations

import ast
from pathlib import Path

import orchestrator.db

PACKAGE = "orchestrator.db"


def db_imports() -> dict[str, set[str]]:
    """Each orchestrator.db module's imports of its siblings, at any depth of its code
    (a function-level import closes a circle at run time too)."""
    graph: dict[str, set[str]] = {}
    for file in sorted(Path(orchestrator.db.__file__).parent.glob("*.py")):
        module = f"{PACKAGE}.{file.stem}"
        found = set()
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            found |= {n for n in names if n.startswith(PACKAGE + ".") and n.count(".") == 2}
        graph[module] = found - {module}
    return graph


def cycle_in(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` as the list of its modules, or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        for imported in sorted(graph.get(module, ())):
            found = visit(imported, [*path, module])
            if found:
                return found
        done.add(module)
        return None

    for module in sorted(graph):
        found = visit(module, [])
        if found:
            return found
    return None


def test_the_db_modules_import_no_circle() -> None:
    graph = db_imports()
    assert f"{PACKAGE}.migrate" in graph[f"{PACKAGE}.engine"]  # the graph is read at all
    assert cycle_in(graph) is None


def test_what_engine_and_migrate_share_imports_neither() -> None:
    graph = db_imports()
    for shared in ("connection", "revisions"):
        assert not graph[f"{PACKAGE}.{shared}"] & {f"{PACKAGE}.engine", f"{PACKAGE}.migrate"}


def test_a_circle_would_be_found() -> None:
    circle = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycle_in(circle) == ["a", "b", "c", "a"]
    assert cycle_in({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
