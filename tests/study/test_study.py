"""The known-answer study end to end at its smallest (see ``study_multirun`` in conftest.py): routing finds
the informative expert, Shapley credit finds it too, and the report reads the study's runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tiger.analysis.results import gather, report
from tiger.study.report import report as study_report
from tiger.study.report import routing


def test_routing_and_shapley_credit_find_the_specialists(study_multirun: Path) -> None:
    results = json.loads((study_multirun / "1" / "results.json").read_text())
    # a fixed budget: the study scores every configuration at its last step, never a "best" checkpoint
    assert results["checkpoint"].endswith("last.ckpt") and "monitor" not in results
    usage = results["routing"]["usage"]
    assert set(usage["edge"]) == {"study_geometry", "study_boundary", "study_noise", "study_loud"}
    edge, depth = usage["edge"], usage["depth"]
    # edges: the boundary specialist takes most of the mass, each distractor little (measured: 96%, 2%, 0.4%)
    assert edge["study_boundary"] > 0.8
    assert edge["study_boundary"] > 10 * max(edge["study_noise"], edge["study_loud"])
    # depth: the geometry specialist takes the largest share (measured: 59%, the loud distractor 29%)
    assert depth["study_geometry"] > 0.4 and depth["study_geometry"] == max(depth.values()), depth
    # Shapley credit: the designed specialist has the largest mean credit of each task
    shapley = results["routing"]["shapley"]
    for task, expert in (("edge", "study_boundary"), ("depth", "study_geometry")):
        credit = shapley[task]["credit"]
        assert credit[expert] == max(credit.values()) and credit[expert] > 0, (task, credit)
    # the routing mass of training batches is recorded every log_every_n_steps (20) steps
    history = results["routing_history"]
    assert [point["step"] for point in history] == [0, 20, 40, 60]
    assert all(math.isclose(sum(point["usage"]["depth"].values()), 1.0, abs_tol=1e-5) for point in history)


def test_gathered_study_has_every_figure(study_multirun: Path) -> None:
    table = gather([study_multirun])
    assert len(table) == 2
    single, full = (table[name] for name in table)
    assert single["experts"] == ["study_boundary"] and len(full["experts"]) == 4
    # Delta_m of the single expert against itself is exactly zero; one seed: std 0
    assert single["delta_m"] == {"mean": 0.0, "std": 0.0, "n": 1}
    assert math.isfinite(full["delta_m"]["mean"])
    assert set(full["agreement"]) == {"subtract"} and set(full["shapley"]) == {"depth", "edge"}
    assert -1.0 <= full["shapley"]["depth"]["spearman"]["mean"] <= 1.0
    # two validations while training, then the final validation of the chosen checkpoint
    assert [step for step, _ in single["curves"][0]["edge"]] == [39, 79, 80]
    importance = full["agreement"]["subtract"]["depth"]["importance"]
    assert math.isclose(sum(stats["mean"] for stats in importance.values()), 1.0, abs_tol=1e-6)
    text = report(table)
    assert "Δm % vs best single" in text and "Shapley" in text and "subtract: Spearman" in text
    rows = routing(table)
    (row,) = rows.values()
    assert row["designed"]["edge"]["mean"] == full["usage"]["edge"]["study_boundary"]["mean"]
    assert "Routing against the designed answer" in study_report(table)
