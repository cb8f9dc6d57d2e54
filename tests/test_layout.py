"""The rooms match the plan (docs/architecture.md), read from the source's imports.

- ``manolayer`` depends on torch and numpy only; ``meshrec`` never imports ``pipelines``;
- no import cycle between modules (imports at any depth, type-checking-only ones aside);
- no module imports another module's private (``_name``) names: what is shared is public.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("manolayer", "meshrec", "pipelines")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(imported module, names taken from it)`` for each runtime import of the file."""
    found = []
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((base, [alias.name for alias in node.names]))
    return found


SOURCES = {_module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def _internal_edges() -> dict[str, set[str]]:
    edges = {name: set() for name in SOURCES}
    for name, path in SOURCES.items():
        for module, names in _imports(path):
            targets = [module] + [f"{module}.{item}" for item in names]
            edges[name] |= {target for target in targets if target in SOURCES and target != name}
    return edges


def test_manolayer_needs_torch_and_numpy_only():
    allowed = {"torch", "numpy", "manolayer"} | set(sys.stdlib_module_names)
    outside = {
        f"{name}: {module}"
        for name, path in SOURCES.items() if name.startswith("manolayer")
        for module, _ in _imports(path)
        if module.split(".")[0] not in allowed and name != "manolayer.build_open_hand"  # a build script of assets
    }
    assert not outside


def test_meshrec_never_imports_pipelines():
    offenders = {name for name, path in SOURCES.items() if name.startswith(("meshrec", "manolayer"))
                 for module, _ in _imports(path) if module.split(".")[0] == "pipelines"}
    assert not offenders


def test_no_import_cycles():
    edges = _internal_edges()
    cycles, state = [], {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for target in sorted(edges[node]):
            if state.get(target) == "open":
                cycles.append(trail[trail.index(target):] + [target])
            elif target not in state:
                visit(target, [*trail, target])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


@pytest.mark.parametrize("package", PACKAGES + ("benchmarks",))
def test_no_module_imports_private_names_of_another(package):
    files = {**SOURCES, **{f"benchmarks.{path.stem}": path for path in (ROOT / "benchmarks").glob("*.py")}}
    offenders = [
        f"{name} imports {module}.{item}"
        for name, path in files.items() if name.split(".")[0] == package
        for module, names in _imports(path)
        for item in names
        if item.startswith("_") and not item.startswith("__") and module != name
    ]
    assert not offenders


def test_the_suite_never_writes_to_the_users_cache(tmp_path_factory):
    from meshrec.cache import cache_root

    assert cache_root().is_relative_to(tmp_path_factory.getbasetemp())


def test_every_source_folder_is_a_package_that_installs():
    """A folder without ``__init__.py`` is left out of a (non-editable) install by setuptools' find."""
    from setuptools import find_packages

    installed = set(find_packages(str(ROOT), include=["manolayer*", "meshrec*", "pipelines*"]))
    with_sources = {name.rpartition(".")[0] if not SOURCES[name].name == "__init__.py" else name for name in SOURCES}
    assert with_sources <= installed, f"not installed: {sorted(with_sources - installed)}"
