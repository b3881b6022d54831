"""The known-answer study's report: the baselines that prove the answer, then, per configuration, what the
routing did against that answer and against exact Shapley credit.

    python -m tiger.study.report outputs/study_*/multiruns/* --json study.json --markdown study.md

It reads the runs through :func:`tiger.analysis.results.gather` and adds what only the study knows, the
designed answer (:data:`tiger.study.experts.DESIGNED`):

- **proof**: for each task, each expert alone (the VFM baselines, mean ± std over seeds); the lead of every
  designed specialist over every other expert in pooled seed standard deviations (wanted >= 3), and how far
  each specialist outside the task's group is above the unit-noise baseline (wanted <= 1); the validation
  curve of each baseline (does it flatten?);
- per configuration: the routing mass on the designed specialists, on the two distractors and on each of the
  redundant pair, the Shapley faithfulness, the agreement with the training target, and the issue's
  yardstick: every useless expert < 5% of every task's mass, the designed specialist >= 80% where it alone
  helps, Spearman(alpha, Shapley) >= 0.5 on every task, Delta_m not below the run without L_cf by more than
  one seed standard deviation.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from statistics import mean, stdev
from typing import Any

from tiger.analysis.results import gather, markdown
from tiger.metrics.summary import MAIN_METRIC
from tiger.study.experts import DESIGNED, DISTRACTORS, REDUNDANT_PAIR

USELESS_AT_MOST = 0.05
SPECIALIST_AT_LEAST = 0.80
SHAPLEY_SPEARMAN_AT_LEAST = 0.5
SEPARATED_BY = 3.0  # seed standard deviations between a designed specialist and any other expert
OUTSIDE_AT_MOST = 1.0  # seed standard deviations a specialist may lead the noise baseline outside its group


def _stats(values: list[float]) -> dict[str, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return {"mean": float("nan"), "std": float("nan")}
    return {"mean": mean(finite), "std": stdev(finite) if len(finite) > 1 else 0.0}


def lead(first: dict[str, float], second: dict[str, float], higher: bool) -> float:
    """How far ``first`` is ahead of ``second`` (negative: behind), in pooled seed standard deviations."""
    gap = (first["mean"] - second["mean"]) * (1.0 if higher else -1.0)
    spread = math.sqrt((first["std"] ** 2 + second["std"] ** 2) / 2)
    return gap / spread if spread > 0 else math.copysign(math.inf, gap) if gap else 0.0


def baselines(table: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{expert: {task: stats}} of the single-expert configurations."""
    return {entry["experts"][0]: entry["metrics"] for entry in table.values() if len(entry["experts"]) == 1}


def proof(table: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per task: whether the single-expert baselines prove the designed answer (see the module docstring)."""
    singles = baselines(table)
    result = {}
    for task, designed in DESIGNED.items():
        if not all(task in metrics for metrics in singles.values()) or not set(designed) <= set(singles):
            continue
        higher = MAIN_METRIC[task][1]
        others = [expert for expert in singles if expert not in designed]
        if not others:
            continue  # nothing to be separated from
        leads = {
            specialist: min(lead(singles[specialist][task], singles[o][task], higher) for o in others)
            for specialist in designed
        }
        noise = singles.get("study_noise", {}).get(task)
        outside = {
            expert: lead(singles[expert][task], noise, higher)
            for expert in others
            if expert not in DISTRACTORS and noise is not None
        }
        result[task] = {
            "designed": list(designed),
            "lead_over_every_other": leads,
            "outside_lead_over_noise": outside,
            "separated": all(value >= SEPARATED_BY for value in leads.values())
            and all(value <= OUTSIDE_AT_MOST for value in outside.values()),
        }
    return result


def _mass(entry: dict[str, Any], task: str, experts: Sequence[str]) -> dict[str, float]:
    """Mean and std over seeds of the routing mass of ``task`` on ``experts`` together."""
    return _stats([sum(run[task].get(e, 0.0) for e in experts) for run in entry["usage_runs"] if task in run])


def _no_cf_reference(table: dict[str, Any]) -> dict[str, Any] | None:
    """The full model without L_cf (Table 3, row 4): every switch on, lambda_cf = 0."""
    for entry in table.values():
        config = entry.get("config") or {}
        net, loss = config.get("model", {}).get("net", {}), config.get("model", {}).get("loss", {})
        if (
            len(entry["experts"]) > 1
            and loss.get("lambda_cf") == 0
            and net.get("expert_interaction")
            and net.get("task_interaction")
            and (net.get("instructions") or {}).get("encoder")
        ):
            return entry
    return None


def routing(table: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per multi-expert configuration: masses on the designed answer, Shapley faithfulness, the yardstick."""
    reference = _no_cf_reference(table)
    result = {}
    for name, entry in table.items():
        if len(entry["experts"]) < 2:
            continue
        experts, tasks = entry["experts"], [t for t in DESIGNED if t in entry["usage"]]
        row: dict[str, Any] = {"designed": {}, "distractors": {}, "pair": {}, "useless_max": {}}
        for task in tasks:
            row["designed"][task] = _mass(entry, task, DESIGNED[task])
            row["distractors"][task] = _mass(entry, task, DISTRACTORS)
            row["pair"][task] = {e: _mass(entry, task, [e]) for e in REDUNDANT_PAIR if e in experts}
            useless = [e for e in experts if e not in DESIGNED[task]]
            row["useless_max"][task] = max(entry["usage"][task][e]["mean"] for e in useless)
        shapley = entry.get("shapley") or {}
        row["shapley_spearman"] = {t: shapley[t]["spearman"] for t in tasks if t in shapley}
        row["useless_mass"] = {t: shapley[t]["useless_mass"] for t in tasks if t in shapley}
        agreement = next(iter(entry.get("agreement", {}).values()), {})
        row["target_spearman"] = {t: agreement[t]["spearman"] for t in tasks if t in agreement}
        single = [t for t in tasks if len(DESIGNED[t]) == 1]
        delta, base = entry.get("delta_m"), (reference or {}).get("delta_m")
        row["yardstick"] = {
            "useless_below_5": all(value < USELESS_AT_MOST for value in row["useless_max"].values()),
            "specialist_above_80": all(row["designed"][t]["mean"] >= SPECIALIST_AT_LEAST for t in single),
            "shapley_spearman_above_0.5": bool(row["shapley_spearman"])
            and all(s["mean"] >= SHAPLEY_SPEARMAN_AT_LEAST for s in row["shapley_spearman"].values()),
            "delta_m_within_1_sigma": None
            if not delta or not base
            else delta["mean"] >= base["mean"] - max(delta["std"], base["std"]),
        }
        result[name] = row
    return result


def _pm(stats: dict[str, float] | None, scale: float = 1.0, digits: int = 1) -> str:
    if not stats or not math.isfinite(stats.get("mean", math.nan)):
        return "-"
    return f"{scale * stats['mean']:.{digits}f} ± {scale * stats['std']:.{digits}f}"


def _sigma(value: float) -> str:
    return "∞" if math.isinf(value) else f"{value:+.1f}"


def report(table: dict[str, Any]) -> str:
    """The study's tables in markdown (the proof, the curves, the routing against the answer)."""
    parts = []
    singles = baselines(table)
    tasks = [t for t in DESIGNED if any(t in m for m in singles.values())]
    if singles:
        header = ["expert alone"] + [f"{t} {MAIN_METRIC[t][0]}" for t in tasks]
        rows = [
            [e] + [_pm(m.get(t), digits=4 if t == "depth" else 2) for t in tasks] for e, m in singles.items()
        ]
        parts.append("### Single-expert baselines (mean ± std over seeds)\n\n" + markdown(header, rows))
        header = ["task", "designed", "its lead over every other expert (σ)",
                  "specialists outside the group vs unit noise (σ)", "answer proven"]  # fmt: skip
        rows = [
            [task, ", ".join(p["designed"]),
             ", ".join(f"{e} {_sigma(v)}" for e, v in p["lead_over_every_other"].items()),
             ", ".join(f"{e} {_sigma(v)}" for e, v in p["outside_lead_over_noise"].items()),
             "yes" if p["separated"] else "no"]
            for task, p in proof(table).items()
        ]  # fmt: skip
        parts.append(
            f"### The proof: designed specialist >= {SEPARATED_BY:g} σ ahead of every other expert, other "
            f"specialists <= {OUTSIDE_AT_MOST:g} σ above noise\n\n" + markdown(header, rows)
        )
        curves = _curves(table)
        if curves:
            parts.append("### Validation curves of the baselines (main metric, mean over seeds)\n\n" + curves)
    rows = []
    for name, row in routing(table).items():
        entry = table[name]
        rows.append(
            [name, _pm(entry.get("delta_m"), digits=2)]
            + [_pm(row["designed"][t], 100.0) for t in row["designed"]]
            + [_pm(row["distractors"][t], 100.0) for t in row["distractors"]]
            + [" / ".join(_pm(s, 100.0) for s in row["pair"].get("depth", {}).values()) or "-"]
            + [_pm(row["shapley_spearman"].get(t), digits=2) for t in row["designed"]]
            + [_pm(row["useless_mass"].get(t), 100.0) for t in row["designed"]]
            + [_pm(row["target_spearman"].get(t), digits=2) for t in row["designed"]]
            + ["".join("✓" if ok else "✗" if ok is False else "-" for ok in row["yardstick"].values())]
        )
    if rows:
        designed = list(next(iter(routing(table).values()))["designed"])
        header = (
            ["configuration", "Δm %"]
            + [f"α on designed: {t} %" for t in designed]
            + [f"α on distractors: {t} %" for t in designed]
            + ["depth: α on geometry / twin %"]
            + [f"Spearman(α, φ) {t}" for t in designed]
            + [f"α on φ <= 0: {t} %" for t in designed]
            + [f"Spearman(α, p) {t}" for t in designed]
            + ["yardstick (useless < 5%, specialist >= 80%, Spearman(α, φ) >= 0.5, Δm)"]
        )
        parts.append("### Routing against the designed answer (validation set)\n\n" + markdown(header, rows))
    return "\n\n".join(parts)


def _curves(table: dict[str, Any]) -> str:
    rows = []
    for entry in table.values():
        if len(entry["experts"]) != 1 or not entry["curves"] or not entry["curves"][0]:
            continue
        for task, points in entry["curves"][0].items():
            steps = [step for step, _ in points]
            values = [
                mean(run[task][i][1] for run in entry["curves"] if task in run and len(run[task]) > i)
                for i in range(len(steps))
            ]
            rows.append(
                [entry["experts"][0], task]
                + [f"{step}: {value:.3g}" for step, value in zip(steps, values, strict=True)]
            )
    width = max((len(row) for row in rows), default=0)
    rows = [row + [""] * (width - len(row)) for row in rows]
    return (
        markdown(["expert", "task"] + [f"validation {i + 1}" for i in range(width - 2)], rows) if rows else ""
    )


def summary(folders: Sequence[Path]) -> dict[str, Any]:
    """``{"table": the gathered runs, "proof": :func:`proof`, "routing": :func:`routing`}`` (the JSON the
    study's notebook reads)."""
    table = gather(folders)
    return {"table": table, "proof": proof(table), "routing": routing(table)}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("multiruns", type=Path, nargs="+", help="multirun folders of the study_* experiments")
    parser.add_argument("--json", type=Path, help="also write the gathered figures here")
    parser.add_argument("--markdown", type=Path, help="also write the tables here")
    args = parser.parse_args(argv)
    study = summary(args.multiruns)
    text = report(study["table"])
    print(text)
    for path, content in ((args.json, json.dumps(study, indent=2)), (args.markdown, text + "\n")):
        if path is not None:
            if path.exists():
                raise FileExistsError(f"{path} exists; give a new file name (nothing was overwritten)")
            path.write_text(content)
            print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
