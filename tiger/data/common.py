"""Shared pieces of the dataset readers: file reading with clear errors, label checks, the base Dataset.

Raw samples (``load_raw``) are dicts of numpy arrays at the original image size:

============  ====================  ============================================================
key           array                 values
============  ====================  ============================================================
image         (H, W, 3) uint8       RGB
semseg        (H, W) uint8          class 0..C-1, 255 = ignore
human_parts   (H, W) uint8          part group 0..6 (0 = background)
sal           (H, W) uint8          {0, 1}
edge          (H, W) float32        {0, 1}
depth         (H, W) float32        metres, 0 = invalid
normals       (H, W, 3) float32     unit vectors, all-zero = invalid
id            str                   the image id
============  ====================  ============================================================

The dataset's ``transform`` (see :mod:`tiger.data.transforms`) turns them into the torch sample of
the task contract (:mod:`tiger.tasks`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
import torch
from PIL import Image

from tiger.data.transforms import to_sample
from tiger.tasks import IGNORE_INDEX, TASK_NAMES

DOWNLOAD_HINT = "see https://github.com/brdav/atrc (README) for the NYUD_MT and PASCAL_MT download links"

RawSample = dict[str, Any]


class DatasetLayoutError(FileNotFoundError):
    """A dataset root, split file, folder or file is missing."""


class CorruptFileError(OSError):
    """A dataset file exists but cannot be read or does not hold what the protocol expects."""


class LabelShapeError(ValueError):
    """A label's size differs from its image's."""


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """Re-raise any failure while reading ``path`` as an error that names it."""
    try:
        yield
    except (CorruptFileError, LabelShapeError, DatasetLayoutError):
        raise
    except FileNotFoundError as error:
        raise DatasetLayoutError(f"missing file {path}") from error
    except Exception as error:  # PIL, numpy and scipy raise many types for a damaged file
        raise CorruptFileError(f"cannot read {path}: {type(error).__name__}: {error}") from error


def read_image(path: Path) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 RGB."""
    with reading(path), Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def read_png(path: Path, channels: int) -> np.ndarray:
    """A png -> (H, W) (``channels`` 1: grey or palette indices) or (H, W, 3) uint8 array."""
    with reading(path), Image.open(path) as image:
        if channels == 3:
            array = np.asarray(image.convert("RGB"))
        else:
            if image.mode not in ("L", "P", "I", "I;16", "1"):
                raise CorruptFileError(f"{path}: expected a single-channel png, got mode {image.mode!r}")
            array = np.asarray(image)
    if array.dtype != np.uint8:
        if array.min() < 0 or array.max() > 255:
            raise CorruptFileError(f"{path}: values outside 0..255 ({array.min()}..{array.max()})")
        array = array.astype(np.uint8)
    return array


def read_npy(path: Path) -> np.ndarray:
    with reading(path):
        return np.load(path, allow_pickle=False)


def read_mat(path: Path) -> dict[str, Any]:
    with reading(path):
        return scipy.io.loadmat(path)


def mat_field(mat: dict[str, Any], key: str, path: Path) -> np.ndarray:
    if key not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise CorruptFileError(f"{path}: no variable {key!r} (it has {keys})")
    return mat[key]


def check_hw(array: np.ndarray, image_hw: tuple[int, int], path: Path, what: str) -> np.ndarray:
    """Raise :class:`LabelShapeError` unless ``array`` is (H, W) or (H, W, k) with the image's H, W."""
    if array.ndim < 2 or tuple(array.shape[:2]) != tuple(image_hw):
        raise LabelShapeError(
            f"{what} label {path} has shape {tuple(array.shape)}, "
            f"expected the image's (H, W) = {tuple(image_hw)}"
        )
    return array


def squeeze_channel(array: np.ndarray, path: Path, what: str) -> np.ndarray:
    """(H, W) or (H, W, 1) -> (H, W)."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise LabelShapeError(f"{what} label {path} has shape {tuple(array.shape)}, expected (H, W)")
    return array


def check_classes(label: np.ndarray, num_classes: int, path: Path, what: str) -> np.ndarray:
    """Raise unless every value is a class index < ``num_classes`` or 255."""
    bad = (label >= num_classes) & (label != IGNORE_INDEX)
    if bad.any():
        values = sorted(set(np.unique(label[bad]).tolist()))[:10]
        raise CorruptFileError(
            f"{path}: {what} values {values} are neither classes 0..{num_classes - 1} nor 255"
        )
    return label


def decode_normals_png(png: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W, 3) float32 ``2 * png / 255 - 1``.

    A pixel stored as (0, 0, 0) cannot encode a unit vector (it would decode to (-1, -1, -1)); it is the
    invalid marker and decodes to the all-zero vector.
    """
    normals = png.astype(np.float32) * np.float32(2.0 / 255.0) - 1.0
    normals[(png == 0).all(-1)] = 0.0
    return normals


def read_split(path: Path, layout: str) -> list[str]:
    """The ids of a split file, one per line."""
    if not path.is_file():
        siblings = sorted(p.name for p in path.parent.glob("*.txt")) if path.parent.is_dir() else []
        raise DatasetLayoutError(
            f"missing split file {path} (found {siblings or 'no split files'} there); "
            f"expected layout:\n{layout}\n{DOWNLOAD_HINT}"
        )
    with reading(path):
        ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise CorruptFileError(f"split file {path} lists no image ids")
    return ids


def check_root(root: str | os.PathLike, name: str, layout: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetLayoutError(
            f"{name} root {root} does not exist or is not a folder; "
            f"expected layout:\n{layout}\n{DOWNLOAD_HINT}"
        )
    return root


def resolve_files(
    root: Path, ids: Sequence[str], folder: str, extensions: Sequence[str], layout: str
) -> list[Path]:
    """For each id the first existing ``root/folder/<id><ext>``; one error lists every missing file."""
    directory = root / folder
    if not directory.is_dir():
        raise DatasetLayoutError(f"missing folder {directory}; expected layout:\n{layout}\n{DOWNLOAD_HINT}")
    present = set(os.listdir(directory))
    found, missing = [], []
    for image_id in ids:
        name = next((image_id + ext for ext in extensions if image_id + ext in present), None)
        if name is None:
            missing.append(directory / (image_id + "|".join(extensions)))
        else:
            found.append(directory / name)
    if missing:
        shown = "\n  ".join(str(p) for p in missing[:5])
        more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DatasetLayoutError(f"{len(missing)} missing file(s) in {directory}:\n  {shown}{more}")
    return found


def check_tasks(tasks: Sequence[str], supported: Sequence[str], dataset: str) -> tuple[str, ...]:
    tasks = tuple(tasks)
    if not tasks:
        raise ValueError(f"{dataset}: select at least one task of {', '.join(supported)}")
    unknown = [t for t in tasks if t not in TASK_NAMES]
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; known tasks: {', '.join(TASK_NAMES)}")
    unsupported = [t for t in tasks if t not in supported]
    if unsupported:
        raise ValueError(f"{dataset} has no labels for {unsupported}; it supports {', '.join(supported)}")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"duplicate tasks in {list(tasks)}")
    return tasks


class MultiTaskDataset(torch.utils.data.Dataset):
    """Base class: ``load_raw(index)`` gives the raw numpy sample, ``__getitem__`` the transformed one.

    Without a transform a sample is only converted to tensors (:func:`tiger.data.transforms.to_sample`,
    no padding).
    """

    supported_tasks: tuple[str, ...] = ()
    num_semseg_classes: int = 0
    default_size: tuple[int, int] = (0, 0)

    def __init__(self, tasks: Sequence[str], transform: Callable[[RawSample], dict[str, Any]] | None) -> None:
        self.tasks = check_tasks(tasks, self.supported_tasks, type(self).__name__)
        self.transform = transform
        self.ids: list[str] = []

    def __len__(self) -> int:
        return len(self.ids)

    def load_raw(self, index: int) -> RawSample:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        raw = self.load_raw(index)
        return self.transform(raw) if self.transform is not None else to_sample(raw)
