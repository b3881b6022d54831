"""Predict every task for your own images: ``python -m tiger.predict CHECKPOINT INPUT... --out DIR``.

INPUT is an image file, a folder (its files with an image extension, not recursive) or a quoted glob
(``"photos/**/*.jpg"``). Images are read with PIL, turned upright by their EXIF orientation and converted to
RGB (greyscale, palette and RGBA images too; the alpha channel is dropped); the run says how many were
converted. Every image ``<id>`` (its file name without extension; two inputs with the same id are an
error) gets, at its original size:

* ``DIR/<task>/<id>.png`` or ``.npy``: the raw saved-prediction format that ``python -m tiger.evaluate``
  scores: semseg / human_parts uint8 class index; sal / edge uint8 ``floor(probability * 255)``;
  ``depth/<id>.npy`` float32 (H, W) metres; ``normals/<id>.npy`` float32 (H, W, 3) unit vectors;
* ``DIR/vis/<task>/<id>.png``: colour pictures (class palettes, depth colour map, normals as RGB,
  boundary and saliency maps in grey);
* ``DIR/routing/<id>.png``: the per-task, per-expert routing-weight maps (unless ``--no-routing``).

Existing files are never overwritten without ``--overwrite``: the run stops before any work and lists
them. Files already in DIR that this run does not write (other tasks or images of an earlier run, perhaps of
another model) stay, and are listed at the end by folder, so the folder is not mistaken for the output of
this model alone (``python -m tiger.evaluate`` scores every task folder it finds). An image that cannot be
read or predicted is reported and skipped; the run goes on and exits with status 1 if any failed. A file
that is not a TIGER checkpoint, an expert whose module cannot be imported, missing inputs or bad options:
status 2.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from tiger.analysis.figures import plot_routing, save_figure
from tiger.data.common import image_to_rgb
from tiger.inference import Prediction, Predictor, load_model
from tiger.tasks import Task

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
USAGE_ERROR = 2
SHOW_CONFLICTS = 5


class UsageError(Exception):
    """Bad command line: reported as ``error: ...`` with exit status 2, before any work."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tiger.predict",
        description="Predict every task of a trained TIGER for your own images (any size).",
        epilog=(
            "Images are converted to RGB (greyscale, palette and RGBA too). Outputs per image <id>: "
            "DIR/<task>/<id>.png|.npy (raw, scored by `python -m tiger.evaluate`), DIR/vis/<task>/<id>.png "
            "and DIR/routing/<id>.png. Exit status: 0 ok, 1 some images failed, 2 bad checkpoint or usage."
        ),
    )
    parser.add_argument("checkpoint", type=Path, help="a .ckpt written by `python -m tiger.train`")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or quoted globs")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    parser.add_argument("--tasks", nargs="+", metavar="TASK", help="tasks to write (default: all)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--no-routing", action="store_true", help="skip the routing figures (faster)")
    parser.add_argument(
        "--expert-weights",
        nargs="+",
        default=[],
        metavar="ROLE=PATH",
        help="local weights per expert role instead of the stored ones, e.g. sam=/ckpt/sam_vit_b_01ec64.pth",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    parser.add_argument(
        "--stretch",
        action="store_true",
        help="always use the training token grid (default: images of another aspect ratio get their own)",
    )
    return parser.parse_args(argv)


def parse_expert_weights(items: Sequence[str]) -> dict[str, str]:
    """``["sam=/path", ...]`` -> {"sam": "/path"}."""
    weights: dict[str, str] = {}
    for item in items:
        role, sep, path = item.partition("=")
        if not sep or not role or not path:
            raise UsageError(f"--expert-weights expects ROLE=PATH, got {item!r}")
        weights[role] = path
    return weights


def collect_images(inputs: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Image files named by ``inputs`` (files, folders, globs), sorted per input, and notes on what a
    folder held that is not an image."""
    files: list[Path] = []
    notes: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            entries = sorted(entry for entry in path.iterdir() if entry.is_file())
            images = [entry for entry in entries if entry.suffix.lower() in IMAGE_SUFFIXES]
            if len(images) < len(entries):
                notes.append(
                    f"{path}: skipped {len(entries) - len(images)} files without an image extension "
                    f"({', '.join(IMAGE_SUFFIXES)})"
                )
            if not images:
                raise UsageError(f"no images in folder {path}")
            files.extend(images)
        elif glob.has_magic(item):
            matches = sorted(
                Path(match) for match in glob.glob(item, recursive=True) if Path(match).is_file()
            )
            if not matches:
                raise UsageError(f"no files match {item!r}")
            files.extend(matches)
        else:
            raise UsageError(f"no such file or folder: {item}")
    return files, notes


def image_ids(files: Sequence[Path]) -> list[str]:
    """File names without extension; an error when two inputs share one."""
    owners: dict[str, list[Path]] = {}
    for path in files:
        owners.setdefault(path.stem, []).append(path)
    clashes = {stem: paths for stem, paths in owners.items() if len(paths) > 1}
    if clashes:
        listing = "; ".join(
            f"{stem}: {', '.join(map(str, paths))}" for stem, paths in list(clashes.items())[:5]
        )
        raise UsageError(f"several inputs would write the same outputs (same file name): {listing}")
    return [path.stem for path in files]


def output_paths(out: Path, image_id: str, tasks: Sequence[Task], routing: bool) -> list[Path]:
    """Every file written for one image."""
    paths = [raw_path(out, task, image_id) for task in tasks]
    paths += [out / "vis" / task.name / f"{image_id}.png" for task in tasks]
    if routing:
        paths.append(out / "routing" / f"{image_id}.png")
    return paths


def earlier_outputs(out: Path, ids: Sequence[str], tasks: Sequence[Task], routing: bool) -> list[Path]:
    """The files in ``out`` that this run will not write (an earlier run's), sorted."""
    if not out.is_dir():
        return []
    written = {path for image_id in ids for path in output_paths(out, image_id, tasks, routing)}
    return sorted(path for path in out.rglob("*") if path.is_file() and path not in written)


def earlier_warning(out: Path, earlier: Sequence[Path]) -> str:
    """What a user reads about the files of an earlier run left in ``out``: how many, in which folders."""
    folders = Counter(path.parent.relative_to(out).as_posix() for path in earlier)
    listed = ", ".join(f"{folder}/ ({count})" for folder, count in sorted(folders.items())[:SHOW_CONFLICTS])
    more = f" and {len(folders) - SHOW_CONFLICTS} more folders" if len(folders) > SHOW_CONFLICTS else ""
    return (
        f"warning: {out} also holds {len(earlier)} files that this run did not write (an earlier run's, "
        f"perhaps of another model): {listed}{more}. They stay; `python -m tiger.evaluate {out}` would score "
        "their task folders as well. Use an empty --out to keep one model's predictions apart."
    )


def check_out(out: Path) -> None:
    """A usage error unless ``out`` is (or can be made) a writable folder: checked before any work."""
    for folder in (out, *out.parents):
        if folder.exists():
            if not folder.is_dir():
                where = "" if folder == out else f" ({folder} is a file)"
                raise UsageError(f"--out {out} must be a folder, but it is inside or is a file{where}")
            if not os.access(folder, os.W_OK):
                raise UsageError(f"--out {out}: {folder} is not writable")
            return


def check_device(name: str) -> None:
    """A usage error unless ``name`` is a torch device this machine has."""
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UsageError(f"--device {name!r} is not a torch device ({error})") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name!r}: CUDA is not available on this machine")


def read_image(path: Path) -> tuple[np.ndarray, str]:
    """An image file -> (H, W, 3) uint8 RGB, upright by its EXIF orientation, and its original PIL mode."""
    with Image.open(path) as image:
        mode = image.mode
        upright = ImageOps.exif_transpose(image)
        return image_to_rgb(upright, path), mode


def raw_path(out: Path, task: Task, image_id: str) -> Path:
    """Where the raw prediction of ``task`` for image ``image_id`` goes (the entry's file suffix)."""
    return out / task.name / f"{image_id}{task.suffix}"


def write_prediction(
    out: Path, image_id: str, image: np.ndarray, prediction: Prediction, predictor: Predictor, routing: bool
) -> None:
    """All outputs of one image."""
    tasks = [task for task in predictor.tasks if task.name in prediction]
    for task in tasks:
        task.write_prediction(prediction[task.name], raw_path(out, task, image_id))
        picture = out / "vis" / task.name / f"{image_id}.png"
        picture.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(task.colorize(prediction[task.name])).save(picture)
    if routing and prediction.routing is not None:
        names = [task.name for task in tasks]
        rows = [prediction.routing.task_names.index(name) for name in names]
        figure = plot_routing(
            image,
            prediction.routing.alpha[rows],
            prediction.routing.grid,
            names,
            prediction.routing.expert_names,
        )
        save_figure(figure, out / "routing" / f"{image_id}.png")


def run(args: argparse.Namespace) -> int:
    """The whole command; returns the exit status."""
    check_out(args.out)
    files, notes = collect_images(args.inputs)
    ids = image_ids(files)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    check_device(args.device)
    predictor = load_model(
        args.checkpoint,
        expert_weights=parse_expert_weights(args.expert_weights),
        device=args.device,
        keep_aspect=not args.stretch,
        batch_size=args.batch_size,
    )
    tasks = list(args.tasks or predictor.task_names)
    unknown = [task for task in tasks if task not in predictor.task_names]
    if unknown:
        raise UsageError(f"--tasks {unknown} are not predicted by this model; it has {predictor.task_names}")
    routing = not args.no_routing
    chosen = [task for task in predictor.tasks if task.name in tasks]
    if not args.overwrite:
        existing = [
            path
            for image_id in ids
            for path in output_paths(args.out, image_id, chosen, routing)
            if path.exists()
        ]
        if existing:
            shown = "\n  ".join(str(path) for path in existing[:SHOW_CONFLICTS])
            more = (
                f"\n  ... and {len(existing) - SHOW_CONFLICTS} more" if len(existing) > SHOW_CONFLICTS else ""
            )
            raise UsageError(
                f"{len(existing)} output files exist already (use --overwrite to replace them):"
                f"\n  {shown}{more}"
            )
    earlier = earlier_outputs(args.out, ids, chosen, routing)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"{len(files)} images -> {args.out} (tasks: {', '.join(tasks)}); {predictor}", file=sys.stderr)

    failures: list[tuple[Path, str]] = []
    converted: Counter[str] = Counter()
    progress = tqdm(total=len(files), unit="image", desc="predict", file=sys.stderr)

    def fail(path: Path, reason: str) -> None:
        failures.append((path, reason))
        progress.write(f"warning: skipped {path}: {reason}", file=sys.stderr)

    for start in range(0, len(files), args.batch_size):
        chunk: list[tuple[Path, str, np.ndarray]] = []
        stop = start + args.batch_size
        for path, image_id in zip(files[start:stop], ids[start:stop], strict=True):
            try:
                image, mode = read_image(path)
            except Exception as error:  # any reader failure is reported per file; the run goes on
                fail(path, f"cannot read the image ({type(error).__name__}: {error})")
                progress.update()
                continue
            if mode != "RGB":
                converted[mode] += 1
            chunk.append((path, image_id, image))
        predictions = _predict_chunk(predictor, chunk, tasks, routing, fail)
        for (path, image_id, image), prediction in zip(chunk, predictions, strict=True):
            if prediction is not None:
                try:
                    write_prediction(args.out, image_id, image, prediction, predictor, routing)
                except (OSError, ValueError) as error:
                    fail(path, f"cannot write its outputs ({type(error).__name__}: {error})")
            progress.update()
    progress.close()

    if converted:
        modes = ", ".join(f"{mode} x{count}" for mode, count in sorted(converted.items()))
        print(f"note: converted {sum(converted.values())} non-RGB images to RGB ({modes})", file=sys.stderr)
    done = len(files) - len(failures)
    print(f"wrote predictions for {done} of {len(files)} images to {args.out}", file=sys.stderr)
    if earlier:
        print(earlier_warning(args.out, earlier), file=sys.stderr)
    if failures:
        print(f"{len(failures)} failed:", file=sys.stderr)
        for path, reason in failures:
            print(f"  {path}: {reason}", file=sys.stderr)
        return 1
    return 0


def _predict_chunk(predictor: Predictor, chunk, tasks, routing, fail) -> list[Prediction | None]:
    """Predict a chunk in one call; if that fails, image by image so one bad image fails alone."""
    images = [image for _, _, image in chunk]
    try:
        return list(predictor.predict(images, routing=routing, tasks=tasks))
    except (ValueError, RuntimeError) as error:
        if len(chunk) == 1:
            fail(chunk[0][0], f"prediction failed ({type(error).__name__}: {error})")
            return [None]
    results: list[Prediction | None] = []
    for item in chunk:
        results.extend(_predict_chunk(predictor, [item], tasks, routing, fail))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (UsageError, FileNotFoundError, ModuleNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return USAGE_ERROR
    except RuntimeError as error:
        from tiger.experts import ExpertWeightsError

        if not isinstance(error, ExpertWeightsError):
            raise
        print(f"error: {error}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
