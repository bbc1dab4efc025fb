"""The import graph of the core: layers point one way, and there is no cycle.

Every import counts, including those inside functions (a lazy import that closes a cycle is a
cycle dodged, not removed) and those under ``TYPE_CHECKING``. Read from the source with
``ast``: nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PACKAGES = ("gpt_simple_core", "gpt_simple")
#: Each layer may import only from itself and the layers before it (leaves first); modules
#: not named here (errors, protocol, registry, ...) are shared foundations.
LAYERS = (
    ("gpt_simple_core.records", "gpt_simple_core.checkpoints"),
    ("gpt_simple_core.plan",),
    ("gpt_simple_core.output", "gpt_simple_core.engine"),
    ("gpt_simple_core.session", "gpt_simple_core.jobs"),
    ("gpt_simple_core.api",),
    ("gpt_simple_core.cli",),
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


MODULES = _modules()


def _targets(name: str, node: ast.AST) -> list[str]:
    """The modules of our packages an import statement in module ``name`` loads."""
    if isinstance(node, ast.Import):
        candidates = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:  # relative: from this module's package, up ``level - 1`` more
            package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            module = ".".join([*base, node.module] if node.module else base)
        else:
            module = node.module or ""
        candidates = [f"{module}.{alias.name}" for alias in node.names] + [module]
    else:
        return []
    targets = set()
    for candidate in candidates:
        # the module itself (or the attribute's module), and every package above it
        while candidate and candidate not in MODULES:
            candidate = candidate.rpartition(".")[0]
        while candidate:
            if candidate in MODULES:
                targets.add(candidate)
            candidate = candidate.rpartition(".")[0]
    targets.discard(name)
    return sorted(targets)


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[name] = {t for node in ast.walk(tree) for t in _targets(name, node)}
    return graph


GRAPH = import_graph()


def _layer(module: str) -> int | None:
    for number, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return number
    return None


def test_the_graph_was_read() -> None:
    assert "gpt_simple_core.session" in GRAPH["gpt_simple_core.cli.execute"]
    assert "gpt_simple_core.engine.scheduler" in GRAPH["gpt_simple_core.engine.run"]
    assert len(GRAPH) > 40


def test_the_engine_never_imports_the_cli() -> None:
    offending = {
        (module, target)
        for module, targets in GRAPH.items()
        if module.startswith("gpt_simple_core.engine")
        for target in targets
        if target.startswith("gpt_simple_core.cli")
    }
    assert offending == set()


def test_layers_point_one_way() -> None:
    offending = []
    for module, targets in GRAPH.items():
        mine = _layer(module)
        for target in targets:
            theirs = _layer(target)
            if mine is not None and theirs is not None and theirs > mine:
                offending.append(f"{module} -> {target}")
    assert offending == []


def test_the_core_never_imports_the_facade() -> None:
    offending = [
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        if module.startswith("gpt_simple_core")
        for target in targets
        if target == "gpt_simple" or target.startswith("gpt_simple.")
    ]
    assert offending == []


def _cycle() -> list[str] | None:
    """One import cycle of the graph, or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(GRAPH.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(GRAPH):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles() -> None:
    assert _cycle() is None, " -> ".join(_cycle() or [])


def test_the_cycle_finder_finds_a_cycle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(GRAPH, "gpt_simple_core.errors", {"gpt_simple_core.session"})
    assert _cycle() is not None
