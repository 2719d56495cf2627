"""The package's floors (docs/architecture.md) hold: every import of cxrkit, module-level or inside
a function, goes to the same floor or a lower one; model families never import one another;
nothing outside the CLI imports the CLI; and the import graph has no circle.

The graph is read from the source with ``ast`` (nothing is imported), so the test takes a second.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cxrkit"

# Floors, lowest first. A module belongs to the floor of the longest prefix listed here; a module
# that matches none fails `test_every_module_has_a_floor` (place new modules deliberately).
FLOORS: dict[str, int] = {
    # 1 ground: errors, files on disk, pixels and volumes, the record stream, geometry, metrics
    "cxrkit": 1, "cxrkit.errors": 1, "cxrkit.files": 1, "cxrkit.io": 1, "cxrkit.pipe": 1,
    "cxrkit.volume": 1, "cxrkit.geometry": 1, "cxrkit.metrics": 1, "cxrkit.modelfiles": 1,
    # 2 physics and data: ray casting, degradation operators, nodules, shared data helpers
    "cxrkit.drr": 2, "cxrkit.siddon": 2, "cxrkit.degrade": 2, "cxrkit.nodules": 2,
    "cxrkit.data": 2, "cxrkit.sample": 2, "cxrkit.device": 2,
    # 3 shared learning floors: the training loop, the diffusion floor
    "cxrkit.train": 3, "cxrkit.diffusion": 3,
    # 4 model families (siblings: see FAMILIES)
    "cxrkit.enhancer": 4, "cxrkit.munit": 4, "cxrkit.ddpm_lq": 4, "cxrkit.synthdit": 4,
    "cxrkit.detector": 4,
    # 5 engines and reports
    "cxrkit.report_detection": 5,
    "cxrkit.synth": 5, "cxrkit.report": 5,
    # 6 the command line
    "cxrkit.cli": 6, "cxrkit.__main__": 6,
}
FAMILIES = tuple(name for name, floor in FLOORS.items() if floor == 4)
CLI = ("cxrkit.cli", "cxrkit.__main__")


def module_names(root: Path = PACKAGE) -> dict[str, Path]:
    """``{dotted module name: file}`` of every module under ``root`` (packages by ``__init__``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool,
              known: Mapping[str, Path]) -> set[str]:
    """The cxrkit modules one import statement loads (``from pkg import sub`` → ``pkg.sub``)."""
    targets: list[str] = []
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = module.split(".") if is_package else module.split(".")[:-1]
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join([*parts, *([node.module] if node.module else [])])
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            targets.append(sub if sub in known else base)
    found = set()
    for target in targets:
        while target and target not in known:  # `import cxrkit.a.b` names cxrkit.a.b
            target = target.rpartition(".")[0]
        if target.split(".")[0] == "cxrkit" and target:
            found.add(target)
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """``{module: cxrkit modules it imports}``, with every import in the file (also inside
    functions and ``TYPE_CHECKING`` blocks), but not a module's own ancestor packages (Python
    runs those first anyway) or itself."""
    known = module_names(root)
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                edges |= _imported(node, name, path.name == "__init__.py", known)
        graph[name] = {e for e in edges if e != name and not name.startswith(e + ".")}
    return graph


def floor_of(module: str) -> int | None:
    """The floor of the longest :data:`FLOORS` prefix of ``module`` (None: unplaced)."""
    best = None
    for prefix in FLOORS:
        if (module == prefix or module.startswith(prefix + ".")) and (
                best is None or len(prefix) > len(best)):
            best = prefix
    return FLOORS[best] if best is not None else None


def family_of(module: str) -> str | None:
    return next((f for f in FAMILIES if module == f or module.startswith(f + ".")), None)


def circles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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


def violations(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """Every import that breaks a floor rule, one line each."""
    out = []
    for importer, targets in sorted(graph.items()):
        for target in sorted(targets):
            here, there = floor_of(importer), floor_of(target)
            if here is None or there is None:
                continue
            in_cli = any(importer == c or importer.startswith(c + ".") for c in CLI)
            if target == "cxrkit.cli" or target.startswith("cxrkit.cli."):
                if not in_cli:
                    out.append(f"{importer} imports the CLI ({target})")
                continue
            if there > here:
                out.append(f"{importer} (floor {here}) imports {target} (floor {there})")
            mine, theirs = family_of(importer), family_of(target)
            if mine and theirs and mine != theirs:
                out.append(f"model family {mine} imports its sibling {theirs} ({importer} -> "
                           f"{target})")
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_import_graph_has_no_circle(graph: dict[str, set[str]]) -> None:
    assert circles(graph) == []


def test_every_module_has_a_floor(graph: dict[str, set[str]]) -> None:
    unplaced = sorted(m for m in graph if floor_of(m) is None)
    assert unplaced == [], "add these to FLOORS here and to docs/architecture.md"


def test_imports_go_down_families_stay_apart_and_nothing_imports_the_cli(
        graph: dict[str, set[str]]) -> None:
    assert violations(graph) == []


def test_the_graph_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    # the checker itself: a circle through a function-level import, an upward import, a sibling
    # family and the library importing the CLI are each reported
    root = tmp_path / "cxrkit"
    files = {
        "__init__.py": "",
        "errors.py": "def f():\n    from cxrkit.train import x\n",
        "train.py": "from cxrkit import errors\n",
        "munit/__init__.py": "from .model import M\n",
        "munit/model.py": "from cxrkit.enhancer import E\n",
        "enhancer/__init__.py": "",
        "report.py": "import cxrkit.cli.app\n",
        "cli/__init__.py": "", "cli/app.py": "",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    fake = import_graph(root)
    assert fake["cxrkit.munit"] == {"cxrkit.munit.model"}
    assert circles(fake) == [["cxrkit.errors", "cxrkit.train"]]
    assert violations(fake) == [
        "cxrkit.errors (floor 1) imports cxrkit.train (floor 3)",
        "model family cxrkit.munit imports its sibling cxrkit.enhancer (cxrkit.munit.model -> "
        "cxrkit.enhancer)",
        "cxrkit.report imports the CLI (cxrkit.cli.app)",
    ]


def test_the_old_circle_is_gone(graph: dict[str, set[str]]) -> None:
    # degrade names its learned methods by module path instead of importing them
    assert not {"cxrkit.munit", "cxrkit.ddpm_lq"} & {t.split(".")[0] + "." + t.split(".")[1]
                                                      for t in graph["cxrkit.degrade"]}
    assert "cxrkit.pipe" not in graph["cxrkit.io"]


def test_learned_degrade_methods_name_modules_that_build_them() -> None:
    from cxrkit.degrade import METHODS, LearnedMethod

    learned = {name: m for name, m in METHODS.items() if isinstance(m, LearnedMethod)}
    assert sorted(learned) == ["ddpm", "munit"]
    for method in learned.values():
        assert importlib.util.find_spec(method.module) is not None
        source = module_names()[method.module].read_text()
        assert "def build_degrader(" in source
        assert floor_of(method.module) == 4
