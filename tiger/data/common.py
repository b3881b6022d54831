"""Shared pieces of the dataset readers: file reading with clear errors, label checks, the base Dataset.

Raw samples (``load_raw``) are dicts of numpy arrays at the original image size:

============  ====================  ============================================================
key           array                 values
============  ====================  ============================================================
image         (H, W, 3) uint8       RGB
semseg        (H, W) uint8          class 0..C-1, 255 = ignore
human_parts   (H, W) uint8          part group 0..6 (0 = background)
sal           (H, W) uint8          {0, 1}
edge          (H, W) float32        {0, 1}, the training target
edge_seism    (H, W) uint8          {0, 1}, the boundary metric's ground truth: ``seg2bmap`` of the
                                    data set's label image (SEISM; the metric thins it)
depth         (H, W) float32        metres, 0 = invalid
normals       (H, W, 3) float32     unit vectors, all-zero = invalid
id            str                   the image id
============  ====================  ============================================================

Every file is read through a :class:`FileKind` (where it lives, its extensions and its reader), so the
readers that training uses are also the ones ``python -m tiger.data.verify`` checks every file with.

The dataset's ``transform`` (see :mod:`tiger.data.transforms`) turns them into the torch sample of
the task contract (:mod:`tiger.tasks`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs
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


class UnsupportedImageError(ValueError):
    """An image whose PIL mode cannot be converted to 8-bit RGB without guessing."""


class InvalidLabelWarning(UserWarning):
    """A label holds values the protocol treats as invalid pixels (e.g. negative depth)."""


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


RGB_MODES = ("RGB", "RGBA", "RGBX", "L", "LA", "P", "PA", "1")
"""PIL modes whose RGB conversion is exact (alpha is dropped, palette looked up, grey replicated)."""
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
"""PIL modes of 16-bit grey images (a 16-bit grey PNG opens as ``I;16``, older Pillow: ``I``)."""


def image_to_rgb(image: Image.Image, path: str | os.PathLike) -> np.ndarray:
    """A PIL image -> (H, W, 3) uint8 RGB, scaled correctly for every mode it accepts.

    8-bit modes (:data:`RGB_MODES`) convert as PIL does (16-bit RGB PNGs already open as 8-bit ``RGB``).
    16-bit grey (:data:`SIXTEEN_BIT_MODES`) maps 0..65535 to 0..255 (``round(v / 257)``, so an 8-bit
    image stored in 16 bits comes back exactly) and is replicated to three channels; PIL's own
    ``convert("RGB")`` would clip every value above 255 to white. Any other mode (``F``, ``CMYK``,
    ``YCbCr``, ``LAB``, ``HSV``, ...), or a mode ``I`` image with values outside 0..65535, is refused
    with an :class:`UnsupportedImageError` (a ``ValueError``) naming the file and the mode: nothing is
    converted silently.
    """
    if image.mode in RGB_MODES:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image)
        if values.ndim != 2:
            raise UnsupportedImageError(f"{path}: a {image.mode} image must be (H, W), got {values.shape}")
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise UnsupportedImageError(
                f"{path}: PIL mode {image.mode!r} with values {values.min()}..{values.max()}, outside the "
                "16-bit range 0..65535; convert it to 8-bit RGB first"
            )
        grey = np.round(values.astype(np.float64) / 257.0).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    raise UnsupportedImageError(
        f"{path}: unsupported PIL image mode {image.mode!r}; expected one of "
        f"{', '.join(RGB_MODES + SIXTEEN_BIT_MODES)} (convert it to 8-bit RGB first)"
    )


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 RGB (see :func:`image_to_rgb`).

    Any failure is a :class:`CorruptFileError` (an unsupported mode, a truncated file) or a
    :class:`DatasetLayoutError` (no such file) that names the file.
    """
    path = Path(path)
    with reading(path), Image.open(path) as image:
        try:
            return image_to_rgb(image, path)
        except UnsupportedImageError as error:
            raise CorruptFileError(str(error)) from error


def read_image(path: Path, hw: tuple[int, int] | None = None) -> np.ndarray:
    """The :class:`FileKind` reader of dataset images: :func:`read_rgb` (``hw`` is unused)."""
    return read_rgb(path)


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


def check_hw(array: np.ndarray, image_hw: tuple[int, int] | None, path: Path, what: str) -> np.ndarray:
    """Raise :class:`LabelShapeError` unless ``array`` is (H, W) or (H, W, k) with the image's H, W.

    ``image_hw`` None (the image itself could not be read) checks only that ``array`` is at least 2-D.
    """
    if array.ndim < 2:
        raise LabelShapeError(f"{what} label {path} has shape {tuple(array.shape)}, expected (H, W[, k])")
    if image_hw is not None and tuple(array.shape[:2]) != tuple(image_hw):
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
    """(H, W, 3) uint8 -> (H, W, 3) float32 ``2 * png / 255 - 1``, every pixel, as the reference decodes.

    InvPT (NYUD ``_load_normals``, PASCAL ``_load_normals_distilled``) decodes every pixel so and ignores
    only zero-length vectors (``AddIgnoreRegions``): those PASCAL's class mask zeroes, and padding. No png
    value decodes to 0 (``2k - 255`` is odd), so a png marks nothing invalid: a pixel (0, 0, 0) is the
    vector (-1, -1, -1), the direction (-1, -1, -1) / sqrt(3), and counts in mErr.
    """
    if png.dtype != np.uint8 or png.ndim != 3 or png.shape[-1] != 3:
        raise ValueError(f"normals png must be (H, W, 3) uint8, got {png.shape} {png.dtype}")
    return png.astype(np.float32) * np.float32(2.0 / 255.0) - 1.0


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


Reader = Callable[[Path, "tuple[int, int] | None"], Any]


@dataclass(frozen=True)
class FileKind:
    """One kind of file of a data set: ``<root>/<folder>/<id><ext>``, and how it is read.

    Attributes:
        folders: searched in order; an id's file is the first ``folder/<id><ext>`` that exists.
        extensions: tried in order within each folder.
        read: ``read(path, image_hw)`` -> the decoded array, raising :class:`CorruptFileError` /
            :class:`LabelShapeError` naming the file when it does not hold what the protocol expects.
            ``image_hw`` is the image's (H, W), or None when the image itself cannot be read.
    """

    folders: tuple[str, ...]
    extensions: tuple[str, ...]
    read: Reader

    def describe(self, root: Path, image_id: str) -> str:
        names = [str(root / folder / (image_id + "|".join(self.extensions))) for folder in self.folders]
        return " (or ".join(names) + ")" * (len(names) - 1)


def locate_files(root: Path, ids: Sequence[str], kind: FileKind) -> tuple[list[Path | None], list[Path]]:
    """For each id the first existing file of ``kind`` (None if there is none), and the missing folders.

    The folders are listed once, so this costs one ``listdir`` per folder, not one ``stat`` per file.
    """
    listings, absent = [], []
    for folder in kind.folders:
        directory = root / folder
        if directory.is_dir():
            listings.append((directory, set(os.listdir(directory))))
        else:
            absent.append(directory)
    found: list[Path | None] = []
    for image_id in ids:
        names = [image_id + ext for ext in kind.extensions]
        found.append(next((d / n for d, present in listings for n in names if n in present), None))
    return found, (absent if len(absent) == len(kind.folders) else [])


def resolve_files(root: Path, ids: Sequence[str], kind: FileKind, layout: str) -> list[Path]:
    """For each id its file of ``kind``; a missing folder, or one error listing every missing file."""
    found, absent = locate_files(root, ids, kind)
    if absent:
        folders = " and ".join(str(d) for d in absent)
        raise DatasetLayoutError(
            f"missing folder{'s' * (len(absent) > 1)} {folders}; expected layout:\n{layout}\n{DOWNLOAD_HINT}"
        )
    missing = [kind.describe(root, i) for i, path in zip(ids, found, strict=True) if path is None]
    if missing:
        where = root / kind.folders[0] if len(kind.folders) == 1 else " / ".join(kind.folders)
        shown = "\n  ".join(missing[:5])
        more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DatasetLayoutError(f"{len(missing)} missing file(s) in {where}:\n  {shown}{more}")
    return [path for path in found if path is not None]


def user_cache_dir(*parts: str) -> Path:
    """``platformdirs.user_cache_dir("tiger") / parts``: ``$XDG_CACHE_HOME/tiger`` or ``~/.cache/tiger``."""
    return Path(platformdirs.user_cache_dir("tiger")).joinpath(*parts)


def folder_key(path: Path) -> str:
    """A short stable name for a data folder (its resolved path), for per-data-set cache files."""
    resolved = str(Path(path).expanduser().resolve())
    return f"{Path(resolved).name}-{hashlib.sha1(resolved.encode()).hexdigest()[:12]}"


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
    # Data sets on disk: the layout (for error messages), the split file under the root, the protocol's
    # split sizes, every kind of file (the key "image" included) and the file keys each task reads.
    layout: str = ""
    split_file: str = ""
    split_sizes: dict[str, int] = {}
    file_kinds: dict[str, FileKind] = {}
    task_files: dict[str, tuple[str, ...]] = {}

    def __init__(self, tasks: Sequence[str], transform: Callable[[RawSample], dict[str, Any]] | None) -> None:
        self.tasks = check_tasks(tasks, self.supported_tasks, type(self).__name__)
        self.transform = transform
        self.ids: list[str] = []

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def files_of(cls, tasks: Sequence[str]) -> tuple[str, ...]:
        """The file keys that ``tasks`` read: "image" first, then each needed key once, in order."""
        keys = ["image"]
        for task in tasks:
            keys += [key for key in cls.task_files.get(task, ()) if key not in keys]
        return tuple(keys)

    def file_keys(self) -> tuple[str, ...]:
        return self.files_of(self.tasks)

    def load_raw(self, index: int) -> RawSample:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        raw = self.load_raw(index)
        return self.transform(raw) if self.transform is not None else to_sample(raw)
