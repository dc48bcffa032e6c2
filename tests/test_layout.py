"""The package's shape: which modules may import which, and no import cycles.

A request walks downward only: http -> secrets/accounts/events -> db -> the kit
(ids, clock, errors, crypto). Assembly (app, cli, settings) may use everything.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

from tests.support.paths import ROOT

PACKAGE = ROOT / "service"
KIT = {"service.ids", "service.clock", "service.errors", "service.crypto", "service.metrics", "service.logs"}
ASSEMBLY = {"service.app", "service.cli", "service.settings"}

# Room -> what it may import, besides itself and the kit.
MAY_IMPORT: dict[str, set[str]] = {
    "service.db": set(),
    "service.accounts": {"service.db"},
    "service.events": {"service.db"},
    "service.secrets": {"service.db", "service.accounts.model", "service.events.model", "service.events.sql"},
    "service.http": {"service.secrets.model", "service.accounts.model"},
}


def modules() -> dict[str, set[str]]:
    """Every module of the package and the service modules it imports."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("service"):
                for alias in node.names:
                    candidate = f"{node.module}.{alias.name}"
                    is_module = (PACKAGE / "/".join(candidate.split(".")[1:])).with_suffix(".py").exists()
                    imported.add(candidate if is_module else node.module)
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names if alias.name.startswith("service")}
        graph[name] = imported - {name}
    return graph


def room(module: str) -> str:
    if module in KIT or module in ASSEMBLY or module == "service":
        return module
    return ".".join(module.split(".")[:2])


def allowed(importer: str, imported: str) -> bool:
    source, target = room(importer), room(imported)
    if source in ASSEMBLY or source == target or imported in KIT or imported == "service":
        return True
    if source in KIT:
        return source == "service.crypto" and imported == "service.ids"
    rules = MAY_IMPORT[source]
    return target in rules or imported in rules


def cycles(graph: dict[str, set[str]]) -> Iterator[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph.get(node, ()):
            if successor not in graph:
                continue
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    yield from found


def test_every_module_imports_only_downward() -> None:
    graph = modules()
    assert "service.db.store" in graph and "service.http.routes" in graph, "the package was not found"
    wrong = sorted(
        f"{importer} imports {imported}"
        for importer, imports in graph.items()
        for imported in imports
        if not allowed(importer, imported)
    )
    assert wrong == []


def test_no_modules_import_each_other_in_a_cycle() -> None:
    assert list(cycles(modules())) == []


def test_no_dialect_is_named_outside_the_database_room() -> None:
    named = []
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "db" or path.name == "settings.py":
            continue
        text = path.read_text()
        if '"sqlite"' in text or '"postgresql"' in text:
            named.append(path.relative_to(ROOT).as_posix())
    assert named == []
