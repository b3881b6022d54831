"""Score a folder of saved predictions against a data set, with the protocol metrics.

    python -m tiger.evaluate PREDICTIONS --dataset nyud --root /data/NYUD_MT [--split val] [--tasks ...]

PREDICTIONS holds ``<task>/<id>.png`` (semseg, human_parts: class index; sal, edge: uint8 probability x 255)
and ``depth/<id>.npy`` (metres), ``normals/<id>.npy`` (H, W, 3), at the original image size: what
``python -m tiger.predict`` writes. Prints the table as the papers lay it out and writes JSON.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from tiger.data import build_dataset
from tiger.metrics import build_metric, format_table
from tiger.tasks import Task, make_task, metric_target


def read_prediction(folder: Path, task: Task, sample_id: str, shape: tuple[int, int]) -> torch.Tensor:
    """One saved prediction -> the batch-of-one format that :meth:`Task.postprocess` gives (the task
    entry's :meth:`Task.read_prediction`, which checks the size and the values and names the file)."""
    path = folder / task.name / f"{sample_id}{task.suffix}"
    if not path.is_file():
        raise FileNotFoundError(f"no prediction for {sample_id!r}: expected {path}")
    return task.read_prediction(path, shape)


def evaluate_folder(
    predictions: Path, dataset: str, root: str | None, split: str, tasks: Sequence[str] | None = None
) -> dict[str, dict[str, float]]:
    """Score every image of ``split``; a missing or unreadable prediction is an error, never skipped."""
    available = [p.name for p in sorted(predictions.iterdir()) if p.is_dir()] if predictions.is_dir() else []
    if not available:
        raise FileNotFoundError(f"{predictions} holds no <task>/ folders of predictions")
    data = build_dataset(dataset, root, split, tasks or [t for t in available if t not in ("vis", "routing")])
    task_list = [make_task(name, num_classes=data.num_semseg_classes) for name in data.tasks]
    metrics = {task.name: build_metric(task, dataset) for task in task_list}
    for index in tqdm(range(len(data)), desc="evaluating", unit="image"):
        sample = data[index]
        sample_id = sample["meta"]["id"]
        shape = tuple(sample["image"].shape[-2:])
        for task in task_list:
            prediction = read_prediction(predictions, task, sample_id, shape)
            metrics[task.name].update(prediction, metric_target(task.name, sample)[None])
    return {name: {k: float(v) for k, v in metric.compute().items()} for name, metric in metrics.items()}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("predictions", type=Path)
    parser.add_argument("--dataset", required=True, choices=["nyud", "pascal", "synthetic"])
    parser.add_argument("--root", help="data set folder (default: $TIGER_DATA/<NYUD_MT|PASCAL_MT>)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--tasks", nargs="+", help="default: every task folder in PREDICTIONS")
    parser.add_argument(
        "--json", type=Path, help="where to write the results (default: PREDICTIONS/metrics.json)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing results file")
    args = parser.parse_args(argv)
    destination = args.json or args.predictions / "metrics.json"
    if destination.exists() and not args.overwrite:
        parser.error(f"{destination} exists; pass --overwrite or another --json")
    results = evaluate_folder(args.predictions, args.dataset, args.root, args.split, args.tasks)
    print(format_table(results, list(results)))
    destination.write_text(json.dumps(results, indent=2))
    print(f"written: {destination}")


if __name__ == "__main__":
    main()
