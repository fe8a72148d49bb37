"""The shape of the code: no import cycle in core or in a plugin, and no sampler module importing
another sampler module (what samplers share lives in a module no sampler owns).

The import graph is read from the source with :mod:`ast`, lazy imports inside functions included
and imports under ``if TYPE_CHECKING:`` excluded (they never run). Importing ``a.b.c`` also runs
the packages ``a`` and ``a.b``, except those the importer already sits in.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from diffcore.registry import get_registry
from diffcore.sampler import Sampler

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"diffcore": ROOT / "diffcore"} | {
    path.name: path for plugin in sorted((ROOT / "plugins").iterdir()) for path in plugin.glob("diffcore_*")
    if (path / "__init__.py").exists()
}


def modules(package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``package`` (``pkg/__init__.py`` is ``pkg``)."""
    base = PACKAGES[package]
    out = {}
    for file in sorted(base.rglob("*.py")):
        parts = [package, *file.relative_to(base).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = file
    return out


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree`` outside ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def imported(module: str, file: Path, known: set[str]) -> set[str]:
    """Modules of ``known`` that importing ``module`` runs directly (lazy imports included)."""
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in _runtime_nodes(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets.add(base)
            for alias in node.names:
                targets.add(f"{base}.{alias.name}")  # a submodule, when it is one
                exported = _lazy_export(base, alias.name)
                if exported:
                    targets.add(exported)
    out = set()
    for target in targets:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):  # the packages on the way run too...
            name = ".".join(parts[:i])
            if name in known and not (module == name or module.startswith(name + ".")):  # ...unless we are in them
                out.add(name)
    return out


def _lazy_export(package: str, name: str) -> str | None:
    """The module a package's PEP 562 ``__getattr__`` imports for ``name`` (diffcore's public names)."""
    if package != "diffcore":
        return None
    return importlib.import_module("diffcore")._EXPORTS.get(name)


def import_graph(package: str) -> dict[str, set[str]]:
    mods = modules(package)
    return {name: imported(name, file, set(mods)) for name, file in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(graph[start])
    while todo:
        v = todo.pop()
        if v not in seen:
            seen.add(v)
            todo.extend(graph[v])
    return seen


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_import_cycle(package: str) -> None:
    found = cycles(import_graph(package))
    assert not found, f"import cycles in {package}: {found}"


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_lazy_imports_and_packages_are_edges(tmp_path: Path) -> None:
    """A function-level import counts; one under TYPE_CHECKING does not; a parent package counts."""
    file = tmp_path / "m.py"
    file.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import p.hidden\n"
                    "def f():\n    from p.sub.deep import x\n")
    assert imported("p.m", file, {"p", "p.hidden", "p.sub", "p.sub.deep", "p.m"}) == {"p.sub", "p.sub.deep"}


def test_spec_does_not_import_the_training_loop() -> None:
    graph = import_graph("diffcore")
    assert "diffcore.training.loop" not in reachable(graph, "diffcore.spec")
    assert "diffcore.spec" not in reachable(graph, "diffcore.component")


def test_no_sampler_module_imports_another() -> None:
    """Sampler modules (those defining a registered sampler) reach no other sampler module, directly or
    through a helper module."""
    sampler_modules = {e.cls.__module__ for e in get_registry().entries("sampler")
                       if e.cls.__module__.startswith("diffcore_samplers.")}
    assert len(sampler_modules) >= 10
    graph = import_graph("diffcore_samplers")
    for module in sorted(sampler_modules):
        others = (reachable(graph, module) & sampler_modules) - {module}
        assert not others, f"{module} imports the sampler module(s) {sorted(others)}"
    assert all(issubclass(e.cls, Sampler) for e in get_registry().entries("sampler"))
