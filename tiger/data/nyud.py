"""NYUD-v2 multi-task reader (PROTOCOL.md sections 1-2), both packagings file by file.

The ATRC / MTI-Net tarball (``NYUD_MT``: ``.jpg`` images, ``.npy`` normals and edges) and the InvPT /
TaskPrompter copy (``NYUDv2``: ``.png`` images, normals and edges) are read by the same class; each
file is taken with whichever extension is present. Decoding:

* semseg ``segmentation/<id>.png``: 0..40, ``0 -> 255`` (ignore), others ``-1`` -> 40 classes.
* depth ``depth/<id>.npy``: metres, 0 = invalid.
* normals ``normals/<id>.npy`` (H, W, 3) in [-1, 1], or ``normals/<id>.png`` ``2 * png / 255 - 1``
  (a png pixel (0, 0, 0) is invalid); an all-zero vector is invalid.
* edge ``edge/<id>.npy`` binary float, or ``edge/<id>.png`` ``png / 255``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tiger.data.common import (
    CorruptFileError,
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
from tiger.tasks import IGNORE_INDEX

NYUD_LAYOUT = """\
NYUD_MT/                      (or the InvPT copy NYUDv2/)
  gt_sets/{train,val}.txt     image ids, one per line (795 / 654)
  images/<id>.jpg             (.png in NYUDv2)
  segmentation/<id>.png       0 = unlabelled, 1..40 classes
  depth/<id>.npy              metres, 0 = invalid
  normals/<id>.npy            (H, W, 3) in [-1, 1]   (.png in NYUDv2)
  edge/<id>.npy               binary                 (.png in NYUDv2)"""

_FOLDERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "image": ("images", (".jpg", ".png")),
    "semseg": ("segmentation", (".png",)),
    "depth": ("depth", (".npy",)),
    "normals": ("normals", (".npy", ".png")),
    "edge": ("edge", (".npy", ".png")),
}


def decode_nyud_semseg(png: np.ndarray) -> np.ndarray:
    """(H, W) uint8 0..40 -> (H, W) uint8: 0 -> 255 (ignore), c -> c - 1."""
    label = png.astype(np.int16) - 1
    label[png == 0] = IGNORE_INDEX
    return label.astype(np.uint8)


class NYUDv2(MultiTaskDataset):
    """NYUD-v2 multi-task (``NYUD_MT`` or ``NYUDv2``) as raw numpy samples / transformed torch samples.

    Args:
        root: the ``NYUD_MT`` (or ``NYUDv2``) folder.
        split: ``gt_sets/<split>.txt``.
        tasks: any subset of :attr:`supported_tasks`.
        transform: raw sample -> torch sample (see :mod:`tiger.data.transforms`); None only converts.
    """

    supported_tasks = ("semseg", "depth", "normals", "edge")
    num_semseg_classes = 40
    default_size = (448, 576)

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
        self.ids = read_split(self.root / "gt_sets" / f"{split}.txt", NYUD_LAYOUT)
        self.files = {
            key: resolve_files(self.root, self.ids, folder, extensions, NYUD_LAYOUT)
            for key, (folder, extensions) in _FOLDERS.items()
            if key == "image" or key in self.tasks
        }

    def load_raw(self, index: int) -> RawSample:
        image = read_image(self.files["image"][index])
        hw = image.shape[:2]
        raw: RawSample = {"image": image, "id": self.ids[index]}
        if "semseg" in self.tasks:
            path = self.files["semseg"][index]
            png = check_hw(read_png(path, 1), hw, path, "semseg")
            if png.max(initial=0) > 40:
                raise CorruptFileError(f"{path}: semseg values up to {png.max()}, expected 0..40")
            raw["semseg"] = decode_nyud_semseg(png)
        if "depth" in self.tasks:
            path = self.files["depth"][index]
            depth = squeeze_channel(check_hw(read_npy(path), hw, path, "depth"), path, "depth")
            if not np.isfinite(depth).all() or (depth < 0).any():
                raise CorruptFileError(f"{path}: depth has NaN, infinite or negative values")
            raw["depth"] = depth.astype(np.float32)
        if "normals" in self.tasks:
            path = self.files["normals"][index]
            if path.suffix == ".png":
                normals = decode_normals_png(check_hw(read_png(path, 3), hw, path, "normals"))
            else:
                normals = check_hw(read_npy(path), hw, path, "normals").astype(np.float32)
            if normals.shape != (*hw, 3):
                raise LabelShapeError(f"normals label {path} has shape {normals.shape}, expected {(*hw, 3)}")
            raw["normals"] = normals
        if "edge" in self.tasks:
            path = self.files["edge"][index]
            if path.suffix == ".png":
                edge = check_hw(read_png(path, 1), hw, path, "edge").astype(np.float32) / 255.0
            else:
                edge = squeeze_channel(check_hw(read_npy(path), hw, path, "edge"), path, "edge")
            raw["edge"] = edge.astype(np.float32)
        return raw
