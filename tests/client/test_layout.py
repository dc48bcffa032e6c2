"""The client distribution stands alone: it never imports the server package, and without the `events`
extra only the HTTP client is needed (no aiokafka)."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support.paths import ROOT

PACKAGE = ROOT / "client" / "secrets_client"
DEPENDENCIES = {"httpx"}
EVENTS_EXTRA = {"aiokafka"}
# Modules that work with the base install: these must not reach aiokafka.
BASE = {"secrets_client", "secrets_client.client", "secrets_client.errors", "secrets_client.models"}
BASE |= {"secrets_client.retry", "secrets_client.sync"}


def imports() -> dict[str, set[str]]:
    """Every module of the client and the top-level names of what it imports (at any depth of the code)."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
        found[name] = names
    return found


def test_the_client_imports_only_the_standard_library_and_its_declared_dependencies() -> None:
    graph = imports()
    assert "secrets_client.events" in graph, "the client package was not found"
    allowed = set(sys.stdlib_module_names) | DEPENDENCIES | EVENTS_EXTRA | {"secrets_client"}
    wrong = sorted(
        f"{module} imports {name}"
        for module, names in graph.items()
        for name in names
        if name.split(".")[0] not in allowed
    )
    assert wrong == []


def test_the_http_client_does_not_need_the_events_extra() -> None:
    graph = imports()
    wrong = sorted(
        f"{module} imports {name}"
        for module in BASE
        for name in graph[module]
        if name.split(".")[0] in EVENTS_EXTRA or (name.startswith("secrets_client.") and name not in BASE)
    )
    assert wrong == []


def test_every_module_imports_without_the_server_package(tmp_path: Path) -> None:
    """Imported in a fresh interpreter in which `service` cannot be imported at all."""
    script = textwrap.dedent(
        """
        import importlib, pkgutil, sys

        class NoServer:
            def find_spec(self, name, path=None, target=None):
                if name == "service" or name.startswith("service."):
                    raise ImportError("the client imported the server package: " + name)
                return None

        sys.meta_path.insert(0, NoServer())
        import secrets_client
        for module in pkgutil.walk_packages(secrets_client.__path__, "secrets_client."):
            importlib.import_module(module.name)
        assert not any(m == "service" or m.startswith("service.") for m in sys.modules)
        print("ok", len([m for m in sys.modules if m.startswith("secrets_client")]))
        """
    )
    # -I: no PYTHONPATH and no current directory on sys.path, so only what is installed is found.
    done = subprocess.run(
        [sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ok")
