"""Check a downloaded data set file by file, with the readers training uses.

    python -m tiger.data.verify --dataset nyud --root /data/NYUD_MT [--splits train val] [--tasks ...]
    python -m tiger.data.verify --dataset pascal --root /data/PASCAL_MT --workers 4

Every file of every split (and every task, unless ``--tasks`` picks some) is read and decoded by the
:class:`~tiger.data.common.FileKind` reader of the data set class, the one ``load_raw`` uses, so a file
that passes here loads in training. Each problem is one line, ``<kind>: <what>`` with kind one of
``missing`` (a split file, folder or file), ``unreadable`` (truncated or not the expected format),
``wrong size`` (a label whose size differs from its image's) and ``bad values`` (out of range, NaN,
unknown classes or fields); values the protocol treats as invalid pixels (negative depth) are ``note``
lines. The summary gives, per split, the number of images (and the benchmark's: NYUD 795 / 654, PASCAL
4,998 / 5,105), the image sizes found and the problem count. The exit code is 1 when a problem was found
(2 when the root itself is missing), else 0. Nothing is written (the PASCAL parts cache included).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from tiger.data.common import (
    CorruptFileError,
    DatasetLayoutError,
    LabelShapeError,
    MultiTaskDataset,
    UnsupportedImageError,
    check_root,
    check_tasks,
    locate_files,
    read_split,
)
from tiger.data.nyud import NYUDv2
from tiger.data.pascal import PascalContext

DATASETS: dict[str, type[MultiTaskDataset]] = {"nyud": NYUDv2, "pascal": PascalContext}
_ROOT_NAMES = {"nyud": "NYUD_MT", "pascal": "PASCAL_MT"}


def problem_line(error: Exception) -> str:
    """``<kind>: <message>`` for a reader's error (the message's own leading "missing " is not repeated)."""
    kind, message = problem_kind(error), str(error).splitlines()[0]
    return f"{kind}: {message.removeprefix(kind + ' ')}"


def problem_kind(error: Exception) -> str:
    """The kind of a reader's error: missing, unreadable, wrong size or bad values."""
    if isinstance(error, (DatasetLayoutError, FileNotFoundError)):
        return "missing"
    if isinstance(error, LabelShapeError):
        return "wrong size"
    if isinstance(error, CorruptFileError) and (
        str(error).startswith("cannot read") or isinstance(error.__cause__, UnsupportedImageError)
    ):
        return "unreadable"
    return "bad values"


@dataclass
class SampleReport:
    """What checking one image id found."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    image_hw: tuple[int, int] | None = None
    files_read: int = 0


def check_sample(job: tuple[str, dict[str, Path]]) -> SampleReport:
    """Read every (present) file of one id with its reader; the image first, for the labels' size."""
    dataset, files = job
    kinds = DATASETS[dataset].file_kinds
    report = SampleReport()
    for key, path in files.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                array = kinds[key].read(path, report.image_hw)
            except Exception as error:  # every reader failure is one line; the check goes on
                if str(path) not in str(error):  # not one of the readers' own errors, which name the file
                    error = CorruptFileError(f"cannot read {path}: {type(error).__name__}: {error}")
                report.problems.append(problem_line(error))
                continue
            finally:
                report.notes += [f"note: {w.message}" for w in caught]
        report.files_read += 1
        if key == "image":
            report.image_hw = tuple(array.shape[:2])
    return report


@dataclass
class SplitReport:
    split: str
    images: int = 0
    expected: int | None = None
    files_read: int = 0
    sizes: Counter = field(default_factory=Counter)
    problems: int = 0
    notes: int = 0


def _jobs(
    dataset: str, root: Path, ids: Sequence[str], keys: Sequence[str], emit
) -> Iterator[tuple[str, dict[str, Path]]]:
    """One job per id with its present files; every missing folder / file is emitted as a problem."""
    cls = DATASETS[dataset]
    located: dict[str, list[Path | None]] = {}
    for key in keys:
        kind = cls.file_kinds[key]
        found, absent = locate_files(root, ids, kind)
        if absent:
            emit(f"missing: folder {' and '.join(map(str, absent))} (the {key} files of {len(ids)} images)")
        else:
            for image_id, path in zip(ids, found, strict=True):
                if path is None:
                    emit(f"missing: {kind.describe(root, image_id)}")
        located[key] = found
    for index in range(len(ids)):
        yield dataset, {key: located[key][index] for key in keys if located[key][index] is not None}


def verify(
    dataset: str,
    root: str | Path,
    splits: Sequence[str] = ("train", "val"),
    tasks: Sequence[str] | None = None,
    workers: int = 1,
    out: TextIO | None = None,
    progress: bool = True,
) -> list[SplitReport]:
    """Check every file of ``splits``; problems go to ``out`` (default stdout) one per line as found.

    Returns one :class:`SplitReport` per split (its ``problems`` count lines printed for that split).
    Raises :class:`~tiger.data.common.DatasetLayoutError` when ``root`` is not a folder.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; verify knows {', '.join(DATASETS)}")
    out = out if out is not None else sys.stdout
    cls = DATASETS[dataset]
    root = check_root(root, _ROOT_NAMES[dataset], cls.layout)
    tasks = check_tasks(tasks or cls.supported_tasks, cls.supported_tasks, cls.__name__)
    keys = cls.files_of(tasks)
    reports = []
    pool = multiprocessing.get_context().Pool(workers) if workers > 1 else None
    try:
        for split in splits:
            report = SplitReport(split, expected=cls.split_sizes.get(split))
            reports.append(report)

            def emit(line: str, report: SplitReport = report) -> None:
                if line.startswith("note:"):
                    report.notes += 1
                else:
                    report.problems += 1
                tqdm.write(line, file=out)

            try:
                ids = read_split(root / cls.split_file.format(split=split), cls.layout)
            except (DatasetLayoutError, CorruptFileError) as error:
                emit(problem_line(error))
                continue
            report.images = len(ids)
            duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
            if duplicates:
                emit(
                    f"bad values: split {split!r} lists {len(duplicates)} ids twice or more: {duplicates[:5]}"
                )
            jobs = _jobs(dataset, root, ids, keys, emit)
            results = pool.imap(check_sample, jobs, chunksize=4) if pool else map(check_sample, jobs)
            for result in tqdm(
                results, total=len(ids), desc=f"{dataset} {split}", unit="image", disable=not progress
            ):
                for line in result.problems + result.notes:
                    emit(line)
                report.files_read += result.files_read
                if result.image_hw is not None:
                    report.sizes[result.image_hw] += 1
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return reports


def summary(dataset: str, reports: Sequence[SplitReport]) -> str:
    """The per-split summary lines and the verdict."""
    cls = DATASETS[dataset]
    lines = []
    for r in reports:
        expected = "" if r.expected is None else f" (the benchmark has {r.expected})"
        sizes = ", ".join(f"{h}x{w}: {n}" for (h, w), n in r.sizes.most_common(3))
        more = f", {len(r.sizes) - 3} other sizes" if len(r.sizes) > 3 else ""
        lines.append(
            f"{r.split}: {r.images} images{expected}, {r.files_read} files read, sizes {sizes or '-'}{more}; "
            f"{r.problems} problem(s), {r.notes} note(s)"
        )
        larger = sum(n for (h, w), n in r.sizes.items() if h > cls.default_size[0] or w > cls.default_size[1])
        if larger:
            lines.append(
                f"  {larger} {r.split} images are larger than the evaluation size "
                f"{cls.default_size[0]}x{cls.default_size[1]}: set data.datamodule.eval_size to fit them"
            )
    total = sum(r.problems for r in reports)
    lines.append(f"{total} problem(s) found" if total else "no problems found")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    parser.add_argument("--root", required=True, type=Path, help="the NYUD_MT / NYUDv2 / PASCAL_MT folder")
    parser.add_argument("--splits", nargs="+", default=["train", "val"])
    parser.add_argument("--tasks", nargs="+", help="default: every task of the data set")
    workers = min(4, os.cpu_count() or 1)
    parser.add_argument(
        "--workers", type=int, default=workers, help=f"processes reading files (default {workers})"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    try:
        reports = verify(
            args.dataset, args.root, args.splits, args.tasks, args.workers, progress=not args.no_progress
        )
    except (DatasetLayoutError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(summary(args.dataset, reports))
    return 1 if any(r.problems for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
