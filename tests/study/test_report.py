"""The study's report: the proof of the designed answer from the baselines, and the yardstick, by hand."""

from __future__ import annotations

import math

from tiger.study.report import lead, proof, report, routing

TASKS = ("semseg", "depth", "normals", "edge")
EXPERTS = ("study_semantics", "study_geometry", "study_geometry_twin", "study_boundary", "study_noise",
           "study_loud")  # fmt: skip


def stats(mean: float, std: float = 0.1) -> dict[str, float]:
    return {"mean": mean, "std": std, "n": 3}


def single(expert: str, values: dict[str, float]) -> dict:
    return {
        "experts": [expert],
        "metrics": {t: stats(v) for t, v in values.items()},
        "curves": [],
        "usage": {},
    }


def baseline_table(semseg_of_semantics: float = 40.0) -> dict:
    """Each specialist clearly best on its tasks; elsewhere all at the noise level."""
    noise = {"semseg": 20.0, "depth": 2.0, "normals": 40.0, "edge": 30.0}
    good = {"semseg": semseg_of_semantics, "depth": 1.0, "normals": 20.0, "edge": 60.0}
    own = {
        "study_semantics": ("semseg",),
        "study_geometry": ("depth", "normals"),
        "study_geometry_twin": ("depth", "normals"),
        "study_boundary": ("edge",),
    }
    return {
        f"b: experts={e}": single(e, {t: good[t] if t in own.get(e, ()) else noise[t] for t in TASKS})
        for e in EXPERTS
    }


def test_lead_is_in_pooled_seed_standard_deviations() -> None:
    assert lead(stats(10.0, 0.3), stats(9.0, 0.4), higher=True) == 1.0 / math.sqrt((0.09 + 0.16) / 2)
    assert lead(stats(1.0), stats(2.0), higher=False) > 0  # lower is better: 1 leads 2
    assert lead(stats(1.0, 0.0), stats(1.0, 0.0), higher=True) == 0.0


def test_the_baselines_prove_the_designed_answer() -> None:
    result = proof(baseline_table())
    assert all(result[task]["separated"] for task in TASKS)
    assert result["depth"]["designed"] == ["study_geometry", "study_geometry_twin"]
    assert result["semseg"]["lead_over_every_other"]["study_semantics"] == 200.0  # (40 - 20) / 0.1
    # a specialist no better than the others on its own task: the answer is not proven
    weak = proof(baseline_table(semseg_of_semantics=20.2))
    assert not weak["semseg"]["separated"] and weak["edge"]["separated"]
    # a specialist that helps outside its group breaks the proof there
    table = baseline_table()
    table["b: experts=study_boundary"]["metrics"]["depth"] = stats(1.8)
    assert not proof(table)["depth"]["separated"]
    assert "| semseg | study_semantics |" in report(baseline_table())


def routed(designed_mass: float, spearman: float, delta: float) -> dict:
    """A multi-expert configuration: ``designed_mass`` on each task's designed experts, the rest spread."""
    usage = {}
    for task, designed in (("semseg", ["study_semantics"]), ("edge", ["study_boundary"])):
        rest = [e for e in EXPERTS if e not in designed]
        usage[task] = {e: designed_mass / len(designed) if e in designed else (1 - designed_mass) / len(rest)
                       for e in EXPERTS}  # fmt: skip
    return {
        "experts": list(EXPERTS),
        "usage": {t: {e: stats(v) for e, v in row.items()} for t, row in usage.items()},
        "usage_runs": [usage],
        "shapley": {
            t: {"spearman": stats(spearman), "useless_mass": stats(1 - designed_mass)} for t in usage
        },
        "agreement": {"subtract": {t: {"spearman": stats(0.1)} for t in usage}},
        "delta_m": stats(delta, 0.5),
        "metrics": {},
        "config": {"model": {"net": {"expert_interaction": True, "task_interaction": True,
                                     "instructions": {"encoder": "x"}}, "loss": {"lambda_cf": 0.1}}},
    }  # fmt: skip


def test_the_yardstick() -> None:
    reference = routed(0.9, 0.6, 0.0)
    reference["config"]["model"]["loss"]["lambda_cf"] = 0.0
    table = {"none": reference, "good": routed(0.97, 0.7, -0.3), "spread": routed(0.6, 0.3, -2.0)}
    rows = routing(table)
    assert rows["good"]["yardstick"] == {
        "useless_below_5": True,  # 0.03 / 5 each
        "specialist_above_80": True,
        "shapley_spearman_above_0.5": True,
        "delta_m_within_1_sigma": True,
    }
    assert rows["spread"]["yardstick"] == {
        "useless_below_5": False,  # 0.4 / 5 = 8% each
        "specialist_above_80": False,
        "shapley_spearman_above_0.5": False,
        "delta_m_within_1_sigma": False,  # -2.0 < 0.0 - 0.5
    }
    assert rows["good"]["designed"]["semseg"]["mean"] == 0.97
    assert math.isclose(rows["spread"]["distractors"]["edge"]["mean"], 2 * 0.4 / 5)
