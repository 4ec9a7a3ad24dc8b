"""The package's modules depend one way: no import cycle, imports inside functions counted."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import selfsup

PACKAGE_DIR = Path(selfsup.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the selfsup modules it imports anywhere in its body. `from a import b`
    counts as importing `a.b` when that is a module, else `a`."""
    modules = {_module_name(path): path for path in PACKAGE_DIR.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    targets.add(submodule if submodule in modules else node.module)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_the_package():
    assert cycles(import_graph()) == []


def test_the_core_does_not_import_kedro_or_the_pipelines():
    """The ML core is plain Python: only the Kedro layer (pipelines, hooks, datasets,
    settings, the registry) may import Kedro or the pipelines."""
    kedro_layer = (
        "selfsup.pipelines",
        "selfsup.hooks",
        "selfsup.datasets",
        "selfsup.settings",
        "selfsup.pipeline_registry",
        "selfsup.__main__",
    )
    offenders = {}
    for name, path in {_module_name(p): p for p in PACKAGE_DIR.rglob("*.py")}.items():
        if name.startswith(kedro_layer):
            continue
        tree = ast.parse(path.read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        bad = sorted(m for m in imported if m.startswith(("kedro", "selfsup.pipelines")))
        if bad:
            offenders[name] = bad
    assert offenders == {}


@pytest.mark.slow
@pytest.mark.parametrize("module", ["selfsup.settings", "selfsup.hooks", "selfsup.config"])
def test_each_entry_point_imports_first_in_a_fresh_interpreter(module):
    """Kedro imports the settings (and through them the hooks) before anything else; an
    import cycle through a package's `__init__`, which the graph above does not count,
    shows up here as a partially initialized module."""
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
