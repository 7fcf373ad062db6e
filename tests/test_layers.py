"""The package map of docs/architecture.md, checked against the source: a test per row of its
"may import" column, and no import cycle anywhere inside the package."""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {  # folder -> package (setuptools package-dir)
    "dealseg": "dealseg",
    "core": "dealseg.core",
    "training": "dealseg.training",
    "export": "dealseg.export",
    "serving": "dealseg.serving",
    "client": "dealseg.client",
}
FRAMEWORKS = ("torch", "onnx", "onnxruntime", "tritonclient", "pyarrow", "ray", "tensorrt")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. dealseg.client.outdir
    file: str  # its file name, e.g. outdir.py
    target: str  # what it imports, absolute: dealseg.client.jsonl, pyarrow.parquet
    lazy: bool  # inside a function


def module_name(path: Path) -> str:
    folder, *rest = path.relative_to(ROOT).with_suffix("").parts
    if rest and rest[-1] == "__init__":
        rest = rest[:-1]
    return ".".join([FOLDERS[folder], *rest])


def is_module(name: str) -> bool:
    """Whether the dealseg name `name` is a module or package of the source."""
    parts = name.split(".")
    folder = {v: k for k, v in FOLDERS.items()}.get(".".join(parts[:2]))
    if folder is None:
        return name == "dealseg"
    base = ROOT / folder / Path(*parts[2:]) if len(parts) > 2 else ROOT / folder
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports_of(path: Path) -> list[Import]:
    """Every import statement of a source file, module level and inside functions, resolved:
    `from X import Y` imports X.Y when that is a module of the package, else X."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend(Import(name, path.name, a.name, lazy) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(anchor + ([child.module] if child.module else []))
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    target = full if full.startswith("dealseg") and is_module(full) else base
                    found.append(Import(name, path.name, target, lazy))
            visit(child, inner)

    visit(tree, False)
    return [i for i in found if i.target != "__future__"]


def source_files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


ALL_IMPORTS = [i for folder in FOLDERS for p in source_files(folder) for i in imports_of(p)]


# ------------------------------------------------------------------------------ the map's rows
@dataclass(frozen=True)
class Allowed:
    lazy: bool  # inside functions only
    files: tuple[str, ...]  # only these files of the package (empty: any)


def package_map() -> dict[str, dict[str, Allowed]]:
    """docs/architecture.md's package table: package -> what it may import."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    rows: dict[str, dict[str, Allowed]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not re.fullmatch(r"`[\w_]+/`", cells[0]):
            continue
        package = cells[1].strip("`").split("`")[0]
        if package not in FOLDERS.values():
            continue  # package data
        allowed = {}
        for item in re.findall(r"([\w]+)(?: \(([^)]*)\))?(?:, |$)", cells[3]):
            word, notes = item
            files = tuple(re.findall(r"([\w]+\.py)", notes))
            allowed[word] = Allowed("lazy" in notes, files)
        rows[package] = allowed
    return rows


MAP = package_map()


def governed(target: str) -> str | None:
    """The name the map uses for an import target: a dealseg package (core, client, ... or
    dealseg for the top package) or a framework; None for what the map does not govern."""
    if target == "dealseg" or target.startswith("dealseg."):
        parts = target.split(".")
        return (
            parts[1] if len(parts) > 1 and f"dealseg.{parts[1]}" in FOLDERS.values() else "dealseg"
        )
    root = target.split(".")[0]
    return root if root in FRAMEWORKS else None


def test_the_map_has_a_row_per_package() -> None:
    assert sorted(MAP) == sorted(FOLDERS.values())
    assert MAP["dealseg.export"]["serving"] == Allowed(True, ("cli.py",))


@pytest.mark.parametrize("package", sorted(FOLDERS.values()))
def test_a_package_imports_only_what_the_map_allows(package: str) -> None:
    own = package.removeprefix("dealseg.") if package != "dealseg" else "dealseg"
    allowed = MAP[package]
    broken = []
    for i in ALL_IMPORTS:
        if i.module != package and not i.module.startswith(package + "."):
            continue
        if package == "dealseg" and i.module != "dealseg":
            continue  # the subpackages have rows of their own
        name = governed(i.target)
        if name is None or name == own:
            continue
        rule = allowed.get(name)
        if rule is None:
            broken.append(f"{i.module} imports {i.target}: not in its row")
        elif rule.lazy and not i.lazy:
            broken.append(f"{i.module} imports {i.target} at module level: the map says lazy")
        elif rule.files and i.file not in rule.files:
            broken.append(f"{i.module} imports {i.target}: only {', '.join(rule.files)} may")
    assert not broken, "\n".join(broken)


def test_the_map_forbids_what_it_does_not_name() -> None:
    """The checker itself: an import outside a row is reported."""
    assert "serving" not in MAP["dealseg.training"] and "client" not in MAP["dealseg.training"]
    assert "torch" not in MAP["dealseg.client"] and "torch" not in MAP["dealseg.core"]
    assert MAP["dealseg.client"]["ray"] == Allowed(True, ("fleet.py",))


# ------------------------------------------------------------------------------------ cycles
def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for i in ALL_IMPORTS:
        graph.setdefault(i.module, set())
        if i.target.startswith("dealseg") and i.target != i.module:
            graph[i.module].add(i.target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
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
            connect(v)
    return found


def test_no_import_cycle_inside_the_package() -> None:
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_imports_are_resolved_to_modules() -> None:
    """`from . import jsonl` is an edge to the module jsonl, not to the package."""
    outdir = {i.target for i in ALL_IMPORTS if i.module == "dealseg.client.outdir"}
    assert {"dealseg.client.jsonl", "dealseg.client.parquet", "dealseg.core.files"} <= outdir


def test_test_modules_import_helpers_not_each_other() -> None:
    """Shared test code lives in tests/helpers.py (and fixtures in conftest.py)."""
    tests = Path(__file__).parent
    found = [
        f"{path.name} imports {node.module}"
        for path in sorted(tests.glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("test_")
    ]
    assert found == []
