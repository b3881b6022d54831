"""Gather the runs of a Hydra multirun into one table, laid out as in the papers.

    python scripts/gather_results.py outputs/nyud_table3/multiruns/<date> [--json table.json]

Each run directory holds results.json (written by ``python -m tiger.train``) and .hydra/overrides.yaml;
a row is named by the run's overrides that differ between runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from tiger.metrics import format_table


def load_runs(multirun: Path) -> list[tuple[list[str], dict]]:
    """-> [(overrides, results)] for every finished run below ``multirun``, in job order."""
    if not multirun.is_dir():
        raise FileNotFoundError(f"{multirun} is not a directory (expected outputs/<name>/multiruns/<date>)")
    runs, unfinished = [], []
    for run in sorted((p for p in multirun.iterdir() if p.is_dir()), key=lambda p: (len(p.name), p.name)):
        results = run / "results.json"
        if not results.is_file():
            unfinished.append(run.name)
            continue
        overrides_file = run / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
        runs.append((list(overrides or []), json.loads(results.read_text())))
    if unfinished:
        print(f"runs without results.json (not finished?): {', '.join(unfinished)}")
    if not runs:
        raise FileNotFoundError(f"no run under {multirun} has a results.json")
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("multirun", type=Path)
    parser.add_argument("--json", type=Path, help="also write the gathered results here")
    args = parser.parse_args()
    runs = load_runs(args.multirun)
    shared = set.intersection(*(set(overrides) for overrides, _ in runs))
    gathered = {}
    for overrides, results in runs:
        name = " ".join(o for o in overrides if o not in shared) or "(base)"
        gathered[name] = results.get("metrics", {})
        tasks = list(gathered[name])
        print(f"\n{name}\n{format_table(gathered[name], tasks)}")
    if args.json:
        args.json.write_text(json.dumps(gathered, indent=2))
        print(f"\nwritten: {args.json}")


if __name__ == "__main__":
    main()
