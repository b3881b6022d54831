"""The known-answer study end to end at its smallest (see ``study_multirun`` in conftest.py): routing finds
the informative expert, and the gathered table reads the study's runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tiger.results import gather, report


def test_routing_puts_more_mass_on_the_specialist_than_on_either_distractor(study_multirun: Path) -> None:
    results = json.loads((study_multirun / "1" / "results.json").read_text())
    usage = results["routing"]["usage"]
    for task, specialist in (("depth", "study_geometry"), ("edge", "study_boundary")):
        row = usage[task]
        assert set(row) == {"study_geometry", "study_boundary", "study_noise", "study_loud"}
        assert row[specialist] > row["study_noise"] and row[specialist] > row["study_loud"], (task, row)
        assert row[specialist] > 0.3, (task, row)  # uniform routing would give 0.25
    # routing mass is recorded at every validation of the fit (steps 30 and 60)
    assert [point["step"] for point in results["routing_history"]] == [30, 60]


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
