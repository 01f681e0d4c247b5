"""The service package's layout: its modules import each other without a circle, so each can be read
(and loaded) after the ones it stands on."""

from __future__ import annotations

import ast
from pathlib import Path

import service

PACKAGE = Path(service.__file__).parent


def imports() -> dict[str, set[str]]:
    """For each module of the package, the package's modules it imports, at any depth of its code
    (an import inside a function is still a dependency, only a deferred one)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(("service", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.startswith("service"))
            elif isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                module = f"{base}.{node.module}" if node.level and node.module else node.module or base
                if not module.startswith("service"):
                    continue
                for alias in node.names:  # `from . import eventlog` imports a module, not a name
                    candidate = f"{module}.{alias.name}"
                    is_module = (PACKAGE.parent / Path(*candidate.split("."))).with_suffix(".py").exists()
                    targets.add(candidate if is_module else module)
        graph[name] = {t for t in targets if t != name and t != "service"}
    return graph


def test_no_module_of_the_service_imports_itself_through_others() -> None:
    """A depth-first walk of the import graph finds no cycle (e.g. app ⇄ api, the one there was)."""
    graph = imports()
    assert "service.hub" in graph and "service.api.websocket" in graph  # the walk sees the package
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []
