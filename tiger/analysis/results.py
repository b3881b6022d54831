"""Gathered results of Hydra multiruns: metrics, Delta_m, expert usage and routing faithfulness.

The command line is ``scripts/gather_results.py``::

    python scripts/gather_results.py outputs/nyud_table3/multiruns/<date>
    python scripts/gather_results.py outputs/study_*/multiruns/* --json study.json --markdown study.md

Each run directory holds results.json (written by ``python -m tiger.train``), config.yaml and
.hydra/overrides.yaml. Runs are grouped into configurations by their resolved config without the seed (runs
of the same configuration in different multiruns are merged); each configuration's figures are the mean and
standard deviation over its seeds. Works for any expert set and task list:

- **metrics**: each task's main metric (PROTOCOL.md), mean +- std over seeds;
- **Delta_m** (%) against the best single expert: for each task, the best mean main metric among the
  single-expert configurations (the VFM baselines), when there are any;
- **usage**: the mean routing weight per task and expert over the validation set; the **right expert** of a
  task is its best single expert, and "on right" is the routing mass on it;
- **agreement with the training target**: per removal mode measured at validation
  (``callbacks.routing.removals``), the Spearman rank correlation between alpha and the counterfactual
  target p over the experts of a token, and the rate at which both rank the same expert first;
- **faithfulness against Shapley credit** (``callbacks.routing.shapley_images``), a reference no target
  trains on: Spearman(alpha, phi), top-1 agreement, the routing mass on experts whose credit is <= 0, and each
  expert's mean credit, per task;
- **curves**: each task's main metric at every validation of the run (from the run's CSV log), and the
  routing mass of training batches over the steps (``routing_history``).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from statistics import mean, stdev
from typing import Any

import yaml

from tiger.metrics import main_values, multi_task_delta
from tiger.metrics.summary import MAIN_METRIC

IGNORED_CONFIG_KEYS = ("seed", "task_name", "paths", "ckpt_path", "hydra")


def find_runs(folders: Sequence[Path]) -> list[Path]:
    """Run directories (with a results.json) below the given multirun folders, in job order."""
    runs, unfinished = [], []
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a directory (expected outputs/<name>/multiruns/<date>)")
        jobs = sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: (len(p.name), p.name))
        for run in jobs if not (folder / "results.json").is_file() else [folder]:
            (runs if (run / "results.json").is_file() else unfinished).append(run)
    if unfinished:
        print(f"runs without results.json (not finished?): {', '.join(str(p) for p in unfinished)}")
    if not runs:
        raise FileNotFoundError(f"no run under {[str(f) for f in folders]} has a results.json")
    return runs


def fingerprint(config: dict[str, Any]) -> str:
    """A hash of the resolved config without the seed, names and paths: equal for equal configurations."""
    kept = {key: value for key, value in config.items() if key not in IGNORED_CONFIG_KEYS}
    return hashlib.sha1(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:12]


def load_run(run: Path) -> dict[str, Any]:
    results = json.loads((run / "results.json").read_text())
    config_file = run / "config.yaml"
    config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
    # the composed config before interpolation: options derived from the seed (${seed}) stay equal
    composed_file = run / ".hydra" / "config.yaml"
    composed = yaml.safe_load(composed_file.read_text()) if composed_file.is_file() else config
    overrides_file = run / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
    return {
        "path": str(run),
        "task_name": config.get("task_name", run.parent.name),
        "overrides": [o for o in (overrides or []) if not o.startswith("seed=")],
        "key": fingerprint(composed) if composed else str(run),
        "seed": config.get("seed"),
        "config": {key: value for key, value in config.items() if key not in IGNORED_CONFIG_KEYS},
        "results": results,
    }


def _stats(values: list[float]) -> dict[str, float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": mean(finite), "std": stdev(finite) if len(finite) > 1 else 0.0, "n": len(finite)}


def group_runs(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{configuration key: {"names", "seeds", "runs"}} in first-seen order; a configuration and seed met
    again (the same run in two multiruns) counts once."""
    groups: dict[str, dict[str, Any]] = {}
    for run in runs:
        group = groups.setdefault(
            run["key"], {"names": [], "seeds": [], "runs": [], "paths": [], "config": run["config"]}
        )
        if run["name"] not in group["names"]:
            group["names"].append(run["name"])
        if run["seed"] is not None and run["seed"] in group["seeds"]:
            continue
        group["seeds"].append(run["seed"])
        group["runs"].append(run["results"])
        group["paths"].append(run["path"])
    return groups


def _rows(rows: list[dict[str, Any]], keys: Sequence[str], experts: Sequence[str], per_expert: str) -> dict:
    """Mean and std over runs of per-task figures ``keys`` and of the per-expert mapping ``per_expert``."""
    tasks = [task for task in rows[0] if all(task in row for row in rows)] if rows else []
    return {
        task: {key: _stats([row[task][key] for row in rows]) for key in keys}
        | {per_expert: {e: _stats([row[task][per_expert][e] for row in rows]) for e in experts}}
        for task in tasks
    }


def validation_curves(run: Path, tasks: Sequence[str]) -> dict[str, list[list[float]]]:
    """{task: [[step, main metric], ...]} of every validation of the run (its ``csv/metrics.csv``): those
    while training, then the final one of the chosen checkpoint."""
    log = run / "csv" / "metrics.csv"
    if not log.is_file():
        return {}
    with log.open() as file:
        rows = list(csv.DictReader(file))
    curves = {}
    for task in tasks:
        key = f"val/{task}/{MAIN_METRIC[task][0]}"
        curves[task] = [[int(row["step"]), float(row[key])] for row in rows if row.get(key)]
    return curves


def summarise(groups: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean and std over seeds of every figure of every configuration (see the module docstring)."""
    table: dict[str, Any] = {}
    for group in groups.values():
        runs = group["runs"]
        tasks = list(runs[0].get("metrics", {}))
        usage_rows = [
            (run.get("routing") or {}).get("usage") or run.get("expert_usage") or {} for run in runs
        ]
        experts = list(next(iter(usage_rows[0].values()), {})) if usage_rows[0] else []
        entry: dict[str, Any] = {
            "names": group["names"],
            "seeds": group["seeds"],
            "experts": experts,
            "metrics": {
                task: _stats([main_values(run["metrics"]).get(task) for run in runs]) for task in tasks
            },
            "usage": {
                task: {expert: _stats([row[task][expert] for row in usage_rows]) for expert in experts}
                for task in (usage_rows[0] if experts else {})
            },
            "agreement": {
                mode: _rows(
                    [_agreement(run)[mode] for run in runs], ("spearman", "top1"), experts, "importance"
                )
                for mode in _agreement(runs[0])
            },
            "shapley": _rows(
                [(run.get("routing") or {}).get("shapley") or {} for run in runs],
                ("spearman", "top1", "useless_mass"),
                experts,
                "credit",
            ),
            "usage_runs": usage_rows,
            "curves": [validation_curves(Path(path), tasks) for path in group["paths"]],
            "config": group["config"],
            "history": [run.get("routing_history", []) for run in runs],
            "checkpoints": [run.get("checkpoint") for run in runs],
        }
        table[" = ".join(group["names"])] = entry
    _add_reference(table, groups)
    return table


def _agreement(run: dict[str, Any]) -> dict[str, Any]:
    """The run's agreement of alpha with the counterfactual target per removal mode (``faithfulness`` in
    results written before it was renamed ``target_agreement``)."""
    routing = run.get("routing") or {}
    return routing.get("target_agreement") or routing.get("faithfulness") or {}


def _add_reference(table: dict[str, Any], groups: dict[str, dict[str, Any]]) -> None:
    """Delta_m against the best single expert per task, and the routing mass on that expert."""
    singles = {name: entry for name, entry in table.items() if len(entry["experts"]) == 1}
    best: dict[str, tuple[float, str]] = {}
    for entry in singles.values():
        for task, stats in entry["metrics"].items():
            higher = MAIN_METRIC[task][1]
            value = stats["mean"]
            if not math.isfinite(value):
                continue
            if task not in best or (value > best[task][0] if higher else value < best[task][0]):
                best[task] = (value, entry["experts"][0])
    margins = {
        task: _margin([e["metrics"][task] for e in singles.values()], MAIN_METRIC[task][1]) for task in best
    }
    for name, group in zip(table, groups.values(), strict=True):
        entry = table[name]
        entry["right_expert"] = {task: expert for task, (_, expert) in best.items()}
        entry["right_margin"] = margins
        if best and all(task in best for task in entry["metrics"]):
            baselines = {task: value for task, (value, _) in best.items()}
            deltas = [
                multi_task_delta({t: v for t, v in main_values(run["metrics"]).items()}, baselines)
                for run in group["runs"]
            ]
            entry["delta_m"] = _stats(deltas)
        entry["on_right"] = {
            task: entry["usage"][task][expert]
            for task, expert in entry["right_expert"].items()
            if task in entry["usage"] and expert in entry["usage"][task]
        }


def _margin(candidates: list[dict[str, float]], higher: bool) -> float:
    """How far the best single expert is ahead of the second best, in units of their pooled seed std
    (inf with one candidate or no spread)."""
    ranked = sorted(candidates, key=lambda stats: stats["mean"], reverse=higher)
    if len(ranked) < 2:
        return float("inf")
    first, second = ranked[0], ranked[1]
    spread = math.sqrt((first["std"] ** 2 + second["std"] ** 2) / 2)
    gap = abs(first["mean"] - second["mean"])
    return gap / spread if spread > 0 else float("inf")


def _pm(stats: dict[str, float] | None, scale: float = 1.0, digits: int = 2) -> str:
    if not stats or not math.isfinite(stats["mean"]):
        return "-"
    return f"{scale * stats['mean']:.{digits}f} ± {scale * stats['std']:.{digits}f}"


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def report(table: dict[str, Any]) -> str:
    """The gathered figures as markdown tables: metrics and Delta_m; usage; agreement with the training
    target; faithfulness against Shapley credit."""
    tasks = [task for task in MAIN_METRIC if any(task in e["metrics"] for e in table.values())]
    digits = {"depth": 4}
    header = (
        ["configuration", "seeds"] + [f"{t} {MAIN_METRIC[t][0]}" for t in tasks] + ["Δm % vs best single"]
    )
    rows = [
        [name, str(len(e["seeds"]))]
        + [_pm(e["metrics"].get(t), digits=digits.get(t, 2)) for t in tasks]
        + [_pm(e.get("delta_m"))]
        for name, e in table.items()
    ]
    parts = ["### Metrics (mean ± std over seeds)\n\n" + markdown(header, rows)]
    right = next((e["right_expert"] for e in table.values() if e.get("right_expert")), {})
    margins = next((e["right_margin"] for e in table.values() if e.get("right_margin")), {})
    if right:
        parts.append(
            "Right expert per task (best single-expert baseline; its lead over the second best in pooled "
            "seed standard deviations): "
            + ", ".join(
                f"{task} → {expert} ({margins.get(task, float('nan')):.1f} σ)"
                for task, expert in right.items()
            )
        )
    multi = {name: e for name, e in table.items() if len(e["experts"]) > 1}
    if multi:
        experts = next(iter(multi.values()))["experts"]
        header = ["configuration", "task", "on right expert %"] + [f"{x} %" for x in experts]
        rows = []
        for name, e in multi.items():
            for task, row in e["usage"].items():
                on_right = _pm(e["on_right"].get(task), 100.0, 1)
                rows.append([name, task, on_right] + [_pm(row.get(x), 100.0, 1) for x in experts])
        parts.append(
            "### Mean routing weight per task and expert (validation set)\n\n" + markdown(header, rows)
        )
        modes = sorted({mode for e in multi.values() for mode in e["agreement"]})
        if modes:
            header = ["configuration"] + [f"{m}: Spearman / top-1" for m in modes]
            rows = []
            for name, e in multi.items():
                cells = []
                for mode in modes:
                    per_task = e["agreement"].get(mode, {})
                    rho = _stats([per_task[t]["spearman"]["mean"] for t in per_task])
                    top1 = _stats([per_task[t]["top1"]["mean"] for t in per_task])
                    cells.append(f"{_pm(rho)} / {_pm(top1)}")
                rows.append([name, *cells])
            parts.append(
                "### Agreement of alpha with the counterfactual training target p, mean over tasks "
                "(± std over tasks of the seed means)\n\n" + markdown(header, rows)
            )
        if any(e["shapley"] for e in multi.values()):
            header = ["configuration", "task", "Spearman(α, φ)", "top-1", "α on φ <= 0 %"]
            header += [f"φ {x}" for x in experts]
            rows = [
                [name, task, _pm(r["spearman"]), _pm(r["top1"]), _pm(r["useless_mass"], 100.0, 1)]
                + [_pm(r["credit"][x], digits=4) for x in experts]
                for name, e in multi.items()
                for task, r in e["shapley"].items()
            ]
            parts.append(
                "### Faithfulness against exact Shapley credit φ (validation images; φ in units of the task "
                "loss)\n\n" + markdown(header, rows)
            )
    return "\n\n".join(parts)


def gather(folders: Sequence[Path]) -> dict[str, Any]:
    """{configuration: figures} of every finished run below ``folders`` (see the module docstring).

    A configuration is named by its task name and the overrides that not every run shares."""
    runs = [load_run(run) for run in find_runs(folders)]
    shared = set.intersection(*(set(run["overrides"]) for run in runs))
    for run in runs:
        name = " ".join(o for o in run["overrides"] if o not in shared) or "(base)"
        run["name"] = f"{run['task_name']}: {name}"
    return summarise(group_runs(runs))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("multiruns", type=Path, nargs="+", help="multirun folders (or single run folders)")
    parser.add_argument("--json", type=Path, help="also write the gathered figures here")
    parser.add_argument("--markdown", type=Path, help="also write the tables here")
    args = parser.parse_args(argv)
    table = gather(args.multiruns)
    text = report(table)
    print(text)
    for path, content in ((args.json, json.dumps(table, indent=2)), (args.markdown, text + "\n")):
        if path is not None:
            if path.exists():
                raise FileExistsError(f"{path} exists; give a new file name (nothing was overwritten)")
            path.write_text(content)
            print(f"\nwritten: {path}")
