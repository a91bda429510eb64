"""The package's floors, read from the source: imports only go downwards and never in a circle.

Every ``import`` statement of ``reaf_lightning/`` and ``analysis/`` (installed as
``reaf_lightning.analysis``) counts, at module level and inside functions alike: a
lazy import is still a dependency. The floors are the developers' guide's:
errors < io, commands, figure_style < layers < models < conversion < data < runs <
training, paper, report, analysis (and the modules at the top of the package).
"""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import REPO

FLOORS = {"errors": 0, "io": 1, "commands": 1, "figure_style": 1, "layers": 2, "models": 3,
          "conversion": 4, "data": 5, "runs": 6, "training": 7, "paper": 7, "report": 7,
          "analysis": 7}  # fmt: skip
TOP = 8  # reaf_lightning/__init__, export, timm


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package) of every module of the installed package."""
    found = {}
    for folder, package in ((REPO / "reaf_lightning", "reaf_lightning"),
                            (REPO / "analysis", "reaf_lightning.analysis")):  # fmt: skip
        for path in folder.rglob("*.py"):
            parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
            found[".".join([package, *parts])] = (path, path.name == "__init__.py")
    return found


def _imports(modules: dict[str, tuple[Path, bool]]) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``from pkg import sub`` counts as ``sub``)."""
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    package = name if is_package else name.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        package = package.rpartition(".")[0]
                    base = f"{package}.{base}" if base else package
                candidates = [f"{base}.{alias.name}" for alias in node.names]
                candidates = [c if c in modules else base for c in candidates]
            else:
                continue
            for target in candidates:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def _floor(module: str) -> int:
    parts = module.split(".")
    return FLOORS.get(parts[1], TOP) if len(parts) > 1 else TOP


def test_imports_only_go_downwards():
    graph = _imports(_modules())
    assert len(graph) > 50  # the scan found the package
    upwards = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        for target in targets
        if _floor(target) > _floor(module)
    )
    assert upwards == []


def test_no_import_cycle():
    """A module re-entering its own package's ``__init__`` is not a cycle; anything else is."""
    graph = _imports(_modules())
    graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_models_and_the_selectivity_maths_stay_light():
    """Models never import Lightning; the selectivity maths neither Lightning nor seaborn."""
    modules = _modules()
    for name, (path, _) in modules.items():
        light = name.startswith(("reaf_lightning.models", "reaf_lightning.layers"))
        maths = name == "reaf_lightning.analysis.selectivity"
        if not (light or maths):
            continue
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            (node.module or "").split(".")[0]
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom) and not node.level
        }
        assert "lightning" not in imported and "pytorch_lightning" not in imported, name
        if maths:
            assert "seaborn" not in imported
