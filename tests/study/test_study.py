"""The known-answer study end to end at its smallest (see ``study_multirun`` in conftest.py): routing finds
the informative expert, and the gathered table reads the study's runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tiger.analysis.results import gather, report


def test_routing_puts_more_mass_on_the_specialists_than_on_noise(study_multirun: Path) -> None:
    results = json.loads((study_multirun / "1" / "results.json").read_text())
    usage = results["routing"]["usage"]
    assert set(usage["edge"]) == {"study_geometry", "study_boundary", "study_noise", "study_loud"}
    edge, depth = usage["edge"], usage["depth"]
    # edges: the boundary specialist takes most of the mass, each distractor a little
    assert edge["study_boundary"] > 0.5 and edge["study_boundary"] > 5 * max(
        edge["study_noise"], edge["study_loud"]
    )
    # depth: the geometry specialist beats the unit-noise distractor and uniform routing (0.25); the loud
    # distractor is left out on purpose: in this small setting it draws depth mass (README, the study)
    assert depth["study_geometry"] > 0.25 and depth["study_geometry"] > depth["study_noise"], depth
    # the routing mass of training batches is recorded every log_every_n_steps (20) steps
    history = results["routing_history"]
    assert [point["step"] for point in history] == [0, 20, 40]
    assert all(math.isclose(sum(point["usage"]["depth"].values()), 1.0, abs_tol=1e-5) for point in history)


def test_gathered_study_has_every_figure(study_multirun: Path) -> None:
    table = gather([study_multirun])
    assert len(table) == 2
    single, full = (table[name] for name in table)
    assert single["experts"] == ["study_geometry"] and len(full["experts"]) == 4
    assert full["right_expert"] == {"depth": "study_geometry", "edge": "study_geometry"}
    # Delta_m of the single expert against itself is exactly zero; one seed: std 0
    assert single["delta_m"] == {"mean": 0.0, "std": 0.0, "n": 1}
    assert math.isfinite(full["delta_m"]["mean"])
    assert full["on_right"]["depth"] == full["usage"]["depth"]["study_geometry"]
    assert set(full["faithfulness"]) == {"subtract", "renormalize", "mean"}
    rho = full["faithfulness"]["mean"]["depth"]["spearman"]["mean"]
    assert -1.0 <= rho <= 1.0
    importance = full["faithfulness"]["mean"]["depth"]["importance"]
    assert math.isclose(sum(stats["mean"] for stats in importance.values()), 1.0, abs_tol=1e-6)
    text = report(table)
    assert "Δm % vs best single" in text and "depth → study_geometry" in text and "mean: Spearman" in text
