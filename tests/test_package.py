"""The package's layering: a light root, no import cycles, each module importing only modules below it."""

from __future__ import annotations

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

import tiger

ROOT = Path(tiger.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: the tiger modules it imports}, at module level or inside functions (typing-only excluded)."""
    modules = {module_name(path): path for path in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
                node.body = []
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names if alias.name.startswith("tiger")}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tiger"):
                for (
                    alias
                ) in node.names:  # `from tiger.tasks import colors` names the module tiger.tasks.colors
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in modules else node.module)
        graph[name] = targets - {name}
    return graph


LAYERS = {  # bottom to top: a module imports only modules of its own layer or below
    "tiger.options": 0,
    "tiger.tasks": 1,  # the task entries and their metrics are one layer: an entry builds its metric
    "tiger.metrics": 1,
    "tiger.experts": 2,
    "tiger.data": 3,
    "tiger.model": 4,
    "tiger.training": 5,
    "tiger.analysis": 6,
    "tiger.study": 7,
    "tiger.inference": 8,
    "tiger.train": 9,
    "tiger.predict": 9,
    "tiger.evaluate": 9,
    "tiger.viz": 9,  # deprecated aliases of tiger.analysis.figures and .results
    "tiger.results": 9,
    "tiger": 9,  # the root's names load from tiger.inference on first use
}


def layer(module: str) -> int:
    """The layer of ``module``: that of its longest prefix in :data:`LAYERS`."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in LAYERS:
            return LAYERS[".".join(parts[:end])]
    raise AssertionError(f"{module} belongs to no layer: add its package to LAYERS")


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as error:
        raise AssertionError(f"import cycle: {' -> '.join(error.args[1])}") from None
    assert (
        order.index("tiger.tasks")
        < order.index("tiger.training.losses")
        < order.index("tiger.training.module")
    )


def test_lower_layers_never_import_higher_ones():
    graph = import_graph()
    upward = [
        f"{name} -> {target}"
        for name, targets in graph.items()
        for target in targets
        if layer(target) > layer(name)
    ]
    assert not upward, upward
    assert graph["tiger.tasks"] <= {
        "tiger.tasks.colors",
        "tiger.tasks.targets",
        "tiger.metrics.dense",
        "tiger.metrics.boundary",
    }
    assert "tiger.experts.registry" not in graph["tiger.experts.timm_expert"]


def test_production_packages_never_import_the_study_nor_the_synthetic_scenes():
    graph = import_graph()
    for name, targets in graph.items():
        if name.startswith(("tiger.study", "tiger.data.synthetic")):
            continue
        reached = {t for t in targets if t.startswith(("tiger.study", "tiger.data.synthetic"))}
        allowed = {"tiger.data.synthetic"} if name == "tiger.data.datamodule" else set()  # the default's data
        assert reached <= allowed, (name, reached)


def test_importing_the_tasks_or_the_root_loads_no_inference_stack_nor_matplotlib(offline_env):
    heavy = ("matplotlib", "torchmetrics", "tiger.inference", "tiger.model")
    code = f"import sys, tiger, tiger.tasks; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=offline_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert result.stdout.strip() == "[]"
    assert tiger.load_model.__module__ == "tiger.inference"  # the root's names load on first use


@pytest.mark.parametrize(
    ("old", "new"), [("tiger.viz", "tiger.analysis.figures"), ("tiger.results", "tiger.analysis.results")]
)
def test_moved_modules_keep_their_documented_imports_with_a_deprecation_warning(old, new):
    import importlib
    import sys

    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
        alias = importlib.import_module(old)
    moved = importlib.import_module(new)
    name = "plot_routing" if old == "tiger.viz" else "gather"
    assert getattr(alias, name) is getattr(moved, name)
