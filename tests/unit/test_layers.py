"""The layers, drawn from the imports of every module (including imports inside functions;
only ``if TYPE_CHECKING:`` imports, which never run, are left out).

* ``domain_builder`` and ``xenstore`` import neither ``xentool`` nor each other;
* nothing in the library imports the CLI (``xentool.cli``);
* the CLI uses the library only through its public modules, never a private name, and
  never ``domain_builder``/``xenstore`` directly;
* no import cycle between modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("xentool", "xenstore", "domain_builder")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(module: str) -> set[tuple[str, str]]:
    """(imported module, imported name or '') for every run-time import of ``module``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[tuple[str, str]] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.update((a.name, "") for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            for a in node.names:
                # `from pkg import mod` imports the module pkg.mod
                sub = f"{base}.{a.name}"
                out.add((sub, "") if sub in MODULES else (base, a.name))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {(m, n) for m, n in out if m.split(".")[0] in PACKAGES}


GRAPH = {m: _imports(m) for m in MODULES}


@pytest.mark.parametrize("lower, forbidden", [
    ("domain_builder", ("xentool", "xenstore")),
    ("xenstore", ("xentool", "domain_builder")),
])
def test_lower_packages_stand_alone(lower: str, forbidden: tuple[str, ...]) -> None:
    bad = sorted((m, i) for m, imps in GRAPH.items() if m.split(".")[0] == lower
                 for i, _ in imps if i.split(".")[0] in forbidden)
    assert bad == []


def _in_cli(module: str) -> bool:
    # xentool.client is the entry point; xentool.daemon runs the CLI's commands for it.
    return module in ("xentool.cli", "xentool.__main__", "xentool.client", "xentool.daemon") \
        or module.startswith("xentool.cli.")


def test_the_library_never_imports_the_cli() -> None:
    bad = sorted((m, i) for m, imps in GRAPH.items()
                 if m.startswith("xentool") and not _in_cli(m)
                 for i, _ in imps if _in_cli(i))
    assert bad == []


def test_the_cli_uses_only_the_librarys_public_names() -> None:
    bad = []
    for m, imps in GRAPH.items():
        if not _in_cli(m):
            continue
        for imported, name in imps:
            if _in_cli(imported):
                continue
            if not imported.startswith("xentool"):
                bad.append((m, imported, name))  # domain_builder / xenstore directly
            elif (name.startswith("_") and not name.endswith("__")) or any(
                    p.startswith("_") for p in imported.split(".")):
                bad.append((m, imported, name))
    assert bad == []


def test_no_import_cycle() -> None:
    edges = {m: {i for i, _ in imps if i in MODULES and i != m} for m, imps in GRAPH.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def strong(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
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
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    assert cycles == []


def test_the_graph_is_not_empty() -> None:
    # Guards the test itself: a broken parser would find no imports and pass everything.
    assert ("xentool.host", "") in {(i, n) for i, n in GRAPH["xentool.cli.commands.control"]} \
        or ("xentool", "Host") in GRAPH["xentool.cli.commands.control"]
    assert any(i == "xenstore.client" for i, _ in GRAPH["xentool.create"])
