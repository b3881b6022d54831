"""NYUD-v2 multi-task reader (PROTOCOL.md sections 1-2), both packagings file by file.

The ATRC / MTI-Net tarball (``NYUD_MT``: ``.jpg`` images, ``.npy`` normals and edges) and the InvPT /
TaskPrompter copy (``NYUDv2``: ``.png`` images, normals and edges) are read by the same class; each
file is taken with whichever extension is present. Decoding:

* semseg ``segmentation/<id>.png``: 0..40, ``0 -> 255`` (ignore), others ``-1`` -> 40 classes.
* depth ``depth/<id>.npy``: metres, 0 = invalid.
* normals ``normals/<id>.npy`` (H, W, 3) in [-1, 1], or ``normals/<id>.png`` ``2 * png / 255 - 1`` for
  every pixel, as InvPT decodes it (a png pixel (0, 0, 0) is the vector (-1, -1, -1), not a marker); an
  all-zero vector is invalid (the .npy's invalid pixels; no png value decodes to it).
* edge ``edge/<id>.npy`` binary float, or ``edge/<id>.png`` ``png / 255``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tiger.data.common import (
    CorruptFileError,
    FileKind,
    InvalidLabelWarning,
    LabelShapeError,
    MultiTaskDataset,
    RawSample,
    check_hw,
    check_root,
    decode_normals_png,
    read_image,
    read_npy,
    read_png,
    read_split,
    resolve_files,
    squeeze_channel,
)
from tiger.metrics.boundary_ops import seg2bmap
from tiger.tasks import IGNORE_INDEX

NYUD_LAYOUT = """\
NYUD_MT/                      (or the InvPT copy NYUDv2/)
  gt_sets/{train,val}.txt     image ids, one per line (795 / 654)
  images/<id>.jpg             (.png in NYUDv2)
  segmentation/<id>.png       0 = unlabelled, 1..40 classes
  depth/<id>.npy              metres, 0 = invalid
  normals/<id>.npy            (H, W, 3) in [-1, 1]   (.png in NYUDv2)
  edge/<id>.npy               binary                 (.png in NYUDv2)"""

NORMALS_TOLERANCE = 1e-2
"""How far a stored normal component may exceed [-1, 1] (float rounding) before the file is refused."""


def decode_nyud_semseg(png: np.ndarray) -> np.ndarray:
    """(H, W) uint8 0..40 -> (H, W) uint8: 0 -> 255 (ignore), c -> c - 1."""
    label = png.astype(np.int16) - 1
    label[png == 0] = IGNORE_INDEX
    return label.astype(np.uint8)


def read_nyud_semseg(path: Path, hw: tuple[int, int] | None) -> np.ndarray:
    """``segmentation/<id>.png`` -> (H, W) uint8 classes 0..39, 255 = ignore."""
    png = check_hw(read_png(path, 1), hw, path, "semseg")
    if png.max(initial=0) > 40:
        raise CorruptFileError(f"{path}: semseg values up to {png.max()}, expected 0..40")
    return decode_nyud_semseg(png)


def read_nyud_depth(path: Path, hw: tuple[int, int] | None) -> np.ndarray:
    """``depth/<id>.npy`` -> (H, W) float32 metres, 0 = invalid.

    Negative values are invalid pixels, as depth 0 is (the protocol, the loss, the metric and the
    reference evaluators all ignore depth <= 0): they become 0, with an :class:`InvalidLabelWarning`
    giving the file and the count. NaN or infinite values are a :class:`CorruptFileError`.
    """
    depth = squeeze_channel(check_hw(read_npy(path), hw, path, "depth"), path, "depth")
    if not np.issubdtype(depth.dtype, np.number):
        raise CorruptFileError(f"{path}: depth has dtype {depth.dtype}, expected float metres")
    depth = depth.astype(np.float32)
    finite = np.isfinite(depth)
    if not finite.all():
        raise CorruptFileError(f"{path}: depth has {int((~finite).sum())} NaN or infinite values")
    negative = depth < 0
    if negative.any():
        warnings.warn(
            f"{path}: {int(negative.sum())} negative depth values, treated as invalid pixels (like 0)",
            InvalidLabelWarning,
            stacklevel=2,
        )
        depth[negative] = 0.0
    return depth


def read_nyud_normals(path: Path, hw: tuple[int, int] | None) -> np.ndarray:
    """``normals/<id>.npy`` (H, W, 3) in [-1, 1], or ``.png`` ``2 * png / 255 - 1`` -> (H, W, 3) float32."""
    if path.suffix == ".png":
        normals = decode_normals_png(check_hw(read_png(path, 3), hw, path, "normals"))
    else:
        normals = check_hw(read_npy(path), hw, path, "normals").astype(np.float32)
    if normals.ndim != 3 or normals.shape[2] != 3:
        raise LabelShapeError(f"normals label {path} has shape {normals.shape}, expected (H, W, 3)")
    finite = np.isfinite(normals)
    if not finite.all() or np.abs(np.where(finite, normals, 0)).max(initial=0) > 1 + NORMALS_TOLERANCE:
        raise CorruptFileError(
            f"{path}: normals must be finite and within [-1, 1], got "
            f"{int((~finite).sum())} NaN/infinite values and range "
            f"[{np.nanmin(normals):.3g}, {np.nanmax(normals):.3g}]"
        )
    return normals


def read_nyud_edge(path: Path, hw: tuple[int, int] | None) -> np.ndarray:
    """``edge/<id>.npy`` binary float, or ``.png`` ``png / 255`` -> (H, W) float32 in [0, 1]."""
    if path.suffix == ".png":
        return check_hw(read_png(path, 1), hw, path, "edge").astype(np.float32) / np.float32(255.0)
    edge = squeeze_channel(check_hw(read_npy(path), hw, path, "edge"), path, "edge").astype(np.float32)
    if not np.isfinite(edge).all() or edge.min(initial=0) < 0 or edge.max(initial=0) > 1:
        raise CorruptFileError(
            f"{path}: edge must be a binary map in [0, 1], got range [{np.nanmin(edge)}, {np.nanmax(edge)}]"
        )
    return edge


NYUD_FILES: dict[str, FileKind] = {
    "image": FileKind(("images",), (".jpg", ".png"), read_image),
    "semseg": FileKind(("segmentation",), (".png",), read_nyud_semseg),
    "depth": FileKind(("depth",), (".npy",), read_nyud_depth),
    "normals": FileKind(("normals",), (".npy", ".png"), read_nyud_normals),
    "edge": FileKind(("edge",), (".npy", ".png"), read_nyud_edge),
}
"""Every kind of NYUD file, by key (each task has the file of its name)."""


class NYUDv2(MultiTaskDataset):
    """NYUD-v2 multi-task (``NYUD_MT`` or ``NYUDv2``) as raw numpy samples / transformed torch samples.

    With the edge task a sample also holds ``edge_seism``: ``seg2bmap`` of the edge map read as a label
    image, the boundary metric's ground truth as SEISM's ``db_gt.m`` / ``edgesEvalImg.m`` build it.

    Args:
        root: the ``NYUD_MT`` (or ``NYUDv2``) folder.
        split: ``gt_sets/<split>.txt``.
        tasks: any subset of :attr:`supported_tasks`.
        transform: raw sample -> torch sample (see :mod:`tiger.data.transforms`); None only converts.
    """

    supported_tasks = ("semseg", "depth", "normals", "edge")
    num_semseg_classes = 40
    default_size = (448, 576)
    layout = NYUD_LAYOUT
    split_file = "gt_sets/{split}.txt"
    split_sizes = {"train": 795, "val": 654}
    file_kinds = NYUD_FILES
    task_files = {task: (task,) for task in supported_tasks}

    def __init__(
        self,
        root: str | Path,
        split: str,
        tasks: Sequence[str],
        transform: Callable[[RawSample], dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(tasks, transform)
        self.root = check_root(root, "NYUD_MT", NYUD_LAYOUT)
        self.split = split
        self.ids = read_split(self.root / self.split_file.format(split=split), NYUD_LAYOUT)
        self.files = {
            key: resolve_files(self.root, self.ids, NYUD_FILES[key], NYUD_LAYOUT) for key in self.file_keys()
        }

    def load_raw(self, index: int) -> RawSample:
        image = read_image(self.files["image"][index])
        hw = image.shape[:2]
        raw: RawSample = {"image": image, "id": self.ids[index]}
        for task in self.tasks:
            raw[task] = NYUD_FILES[task].read(self.files[task][index], hw)
        if "edge" in self.tasks:
            raw["edge_seism"] = seg2bmap(raw["edge"]).astype(np.uint8)
        return raw
