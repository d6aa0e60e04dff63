"""The rooms of ARCHITECTURE.md, read from the source: who may import whom, and no import cycles.

Every `import` / `from ... import` statement of engine/ and tnr_tui/ counts, at module level or inside a
function (a lazy import still ties the rooms together); imports under `if TYPE_CHECKING:` do not, since they
never run. tests/test_rooms.py checks the same rooms at run time (what a fresh interpreter loads).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "tnr_tui")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level) for every import statement that runs."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and is_type_checking(child):
                for stmt in child.orelse:
                    visit(stmt, top)
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, top) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    name = ".".join(base + ([child.module] if child.module else []))
                else:
                    name = child.module or ""
                # `from pkg import module` imports that module (its package is a parent, imported anyway);
                # `from module import name` imports the module.
                submodules = [f"{name}.{a.name}" for a in child.names if f"{name}.{a.name}" in MODULES]
                found.extend((m, top) for m in submodules)
                if len(submodules) < len(child.names):
                    found.append((name, top))
            nested = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, top and not nested)

    visit(tree, True)
    return found


FILES = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))
MODULES = {module_name(p) for p in FILES}
GRAPH = {module_name(p): imports_of(p) for p in FILES}


def ours(name: str) -> str | None:
    """The module of ours an import names (the longest prefix that is one of our modules)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in MODULES:
            return candidate
    return None


def room(module: str) -> str:
    for prefix in ("tnr_tui.services.history", "tnr_tui.services", "tnr_tui.ui", "tnr_tui.cli", "engine"):
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    return module


def breaches(rule) -> list[str]:
    return [f"{m} imports {name}" for m, imports in GRAPH.items() for name, top in imports if rule(m, name, top)]


def test_the_reader_sees_imports_and_skips_type_checking_blocks():
    # Guard against a reader that cannot fail: known edges are found, TYPE_CHECKING-only ones are not.
    sampler = {name for name, _ in GRAPH["engine.sampler"]}
    assert "engine.guidance" in sampler and "torch" in sampler
    assert "engine.request" not in {name for name, _ in GRAPH["engine.solvers.base"]}


def top(name: str) -> str:
    return name.split(".")[0]


def test_engine_imports_nothing_of_the_lab():
    assert breaches(lambda m, name, _: room(m) == "engine" and top(name) in ("tnr_tui", "textual", "sqlalchemy")) == []


def test_services_import_no_textual_and_no_argparse():
    rule = lambda m, name, _: m.startswith("tnr_tui.services") and top(name) in ("textual", "textual_image", "argparse")  # noqa: E731
    assert breaches(rule) == []
    assert breaches(lambda m, name, _: m.startswith("tnr_tui.services") and room(ours(name) or "") in ("tnr_tui.ui", "tnr_tui.cli")) == []


def test_the_history_imports_no_torch_and_nothing_above_it():
    rule = lambda m, name, _: room(m) == "tnr_tui.services.history" and (  # noqa: E731
        top(name) in ("torch", "diffusers", "transformers", "textual")
        or (ours(name) or "").startswith(("tnr_tui.ui", "tnr_tui.cli", "tnr_tui.services.runs", "tnr_tui.services.sweep", "tnr_tui.services.study"))
    )
    assert breaches(rule) == []


def test_ui_and_cli_load_torch_only_lazily_and_the_ui_never_imports_the_cli():
    heavy = ("torch", "diffusers", "transformers", "safetensors")
    assert breaches(lambda m, name, at_top: room(m) in ("tnr_tui.ui", "tnr_tui.cli") and at_top and top(name) in heavy) == []
    assert breaches(lambda m, name, _: room(m) == "tnr_tui.ui" and room(ours(name) or "") == "tnr_tui.cli") == []


def test_unit_modules_import_torch_only_inside_functions():
    unit_packages = ("engine.solvers", "engine.guidance", "engine.schedules")
    rule = lambda m, name, at_top: m.startswith(unit_packages) and at_top and top(name) in ("torch", "torchsde", "kornia", "numpy", "scipy")  # noqa: E731
    assert breaches(rule) == []


def cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), over every import that runs."""
    edges = {m: sorted({o for name, _ in imports if (o := ours(name)) and o != m}) for m, imports in GRAPH.items()}
    # A package's __init__ importing its own submodules is how packages are built, not a cycle between rooms;
    # a submodule importing its package's __init__ back is what counts.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                strong(w)
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

    import sys

    sys.setrecursionlimit(10_000)
    for v in edges:
        if v not in index:
            strong(v)
    return found


def test_there_are_no_import_cycles():
    found = cycles()
    assert found == [], "\n".join(
        " <-> ".join(c) + ": " + "; ".join(f"{m} -> {o}" for m in c for n, _ in GRAPH[m] if (o := ours(n)) in c and o != m)
        for c in found
    )


@pytest.mark.parametrize("module", ["engine.request", "engine.units", "tnr_tui.services.history.store"])
def test_the_graph_covers_the_rooms(module):
    assert module in GRAPH and GRAPH[module]
