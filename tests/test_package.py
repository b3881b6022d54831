"""The package's layering: a light root, no import cycles, each module importing only modules below it."""

from __future__ import annotations

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

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
                for alias in node.names:  # `from tiger.tasks import colors` names the module tiger.tasks.colors
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in modules else node.module)
        graph[name] = targets - {name}
    return graph


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as error:
        raise AssertionError(f"import cycle: {' -> '.join(error.args[1])}") from None
    assert order.index("tiger.tasks") < order.index("tiger.training.losses") < order.index("tiger.training.module")


def test_lower_layers_never_import_higher_ones():
    graph = import_graph()
    assert graph["tiger.tasks"] <= {
        "tiger.tasks.colors",
        "tiger.tasks.targets",
        "tiger.metrics.dense",
        "tiger.metrics.boundary",
    }
    assert "tiger.training.losses" not in graph["tiger.analysis.figures"] and "tiger.inference" not in graph["tiger.analysis.figures"]
    assert "tiger.experts.registry" not in graph["tiger.experts.timm_expert"]
    for name, targets in graph.items():  # the model, its parts and the metrics never reach the entry points
        if (
            name.startswith(("tiger.model.nn", "tiger.metrics", "tiger.experts", "tiger.data"))
            or name == "tiger.model"
        ):
            assert not targets & {
                "tiger.inference",
                "tiger.predict",
                "tiger.train",
                "tiger.analysis.figures",
                "tiger.training.module",
            }


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
