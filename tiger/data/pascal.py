"""PASCAL-Context multi-task reader (the ``PASCAL_MT`` folder; PROTOCOL.md sections 1-2).

Tasks: semseg (21 VOC classes), human_parts (7 = background + 6 part groups), sal, normals, edge.
Decoding, per task:

* semseg: ``semseg/VOC12/<id>.png`` if present, else ``semseg/pascal-context/<id>.png``; 0..20, 255 ignore.
* human_parts: ``human_parts/<id>.mat``, struct ``anno``; every person object (class 15) that has parts
  contributes its part masks, merged into the 6 groups of :data:`HUMAN_PART_GROUPS` (later persons
  overwrite earlier ones where they overlap). An image without a person (per the category cache
  ``ImageSets/Parts/<split>.txt``: read from the data set when it has one for the split, else built on
  first use and kept under the user cache, never written into the data set) is all background; the
  transforms then ignore a map that is all 0/255 entirely.
* sal: ``sal_distill/<id>.png / 255 > 0.5``.
* normals: ``2 * normals_distill/<id>.png / 255 - 1`` for every pixel (a png pixel (0, 0, 0) is the
  vector (-1, -1, -1), as InvPT decodes it), zeroed (invalid) where the ``LabelMap`` of
  ``pascal-context/trainval/<id>.mat`` is not one of :data:`NORMALS_VALID_CONTEXT_IDS`.
* edge: ``thin(|Laplacian(LabelMap)| > 0)`` (3x3 Laplacian, mirrored border as OpenCV's default), the
  training target; the boundary metric's ground truth ``edge_seism`` is ``seg2bmap(LabelMap)``, as
  SEISM builds it (``db_gt.m``, ``edgesEvalImg.m``; the metric thins it).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.ndimage
from skimage.morphology import thin

from tiger.data.common import (
    CorruptFileError,
    FileKind,
    MultiTaskDataset,
    RawSample,
    check_classes,
    check_hw,
    check_root,
    decode_normals_png,
    folder_key,
    mat_field,
    read_image,
    read_mat,
    read_png,
    read_split,
    reading,
    resolve_files,
    user_cache_dir,
)
from tiger.metrics.boundary_ops import seg2bmap

log = logging.getLogger(__name__)

VOC_CATEGORY_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
PERSON_CLASS = 15

HUMAN_PART_GROUPS: dict[str, int] = {
    "hair": 1, "head": 1, "lear": 1, "lebrow": 1, "leye": 1, "mouth": 1, "nose": 1, "rear": 1, "rebrow": 1,
    "reye": 1, "neck": 2, "torso": 2, "luarm": 3, "ruarm": 3, "lhand": 4, "llarm": 4, "rhand": 4, "rlarm": 4,
    "luleg": 5, "ruleg": 5, "lfoot": 6, "llleg": 6, "rfoot": 6, "rlleg": 6,
}  # fmt: skip
"""PASCAL-Part person part name -> group: 1 head, 2 torso, 3 upper arms, 4 lower arms and hands,
5 upper legs, 6 lower legs and feet (0 is background)."""

NORMALS_VALID_CONTEXT_IDS = (
    3, 4, 6, 9, 10, 11, 13, 15, 17, 18, 22, 23, 29, 30, 33, 34, 36, 37, 38, 39, 41, 43, 46, 49, 50,
    51, 53, 55, 56, 59, 61, 62, 65, 66, 68, 69, 72, 73, 78, 83, 84, 85, 87, 88, 95, 96, 101, 104,
    105, 107, 111, 113, 115, 122, 124, 135, 141, 142, 143, 146, 150, 154, 157, 158, 159, 165, 172,
    174, 181, 183, 184, 191, 193, 195, 197, 199, 202, 213, 215, 216, 219, 220, 223, 225, 228, 230,
    232, 233, 238, 239, 242, 243, 246, 250, 251, 252, 255, 260, 261, 263, 269, 272, 273, 275, 281,
    283, 284, 285, 286, 287, 288, 290, 291, 292, 293, 295, 304, 307, 309, 310, 314, 315, 319, 323,
    329, 330, 331, 336, 342, 345, 349, 350, 351, 352, 355, 357, 368, 370, 371, 374, 379, 380, 383,
    384, 397, 401, 403, 405, 407, 408, 411, 412, 413, 414, 417, 419, 421, 423, 427, 429, 430, 432,
    440, 441, 442, 443, 444, 446, 454, 457,
)  # fmt: skip
"""The 170 PASCAL-Context (459-class) LabelMap ids whose distilled normals are valid."""

NUM_CONTEXT_CLASSES = 459
_NORMALS_VALID = np.zeros(NUM_CONTEXT_CLASSES + 1, dtype=bool)
_NORMALS_VALID[list(NORMALS_VALID_CONTEXT_IDS)] = True

PASCAL_LAYOUT = """\
PASCAL_MT/
  ImageSets/Context/{train,val}.txt     image ids, one per line
  ImageSets/Parts/{train,val}.txt       JSON {id: [object category ids]} (optional: else built once)
  JPEGImages/<id>.jpg
  semseg/VOC12/<id>.png                 0..20, 255 = ignore (else semseg/pascal-context/<id>.png)
  human_parts/<id>.mat                  struct 'anno' (PASCAL-Part objects and parts)
  sal_distill/<id>.png
  normals_distill/<id>.png
  pascal-context/trainval/<id>.mat      'LabelMap' (459 Context classes): edge, normals mask"""


def edge_from_label_map(label_map: np.ndarray) -> np.ndarray:
    """(H, W) LabelMap -> (H, W) float32 {0, 1}: ``thin(|Laplacian(LabelMap)| > 0)``.

    The 3x3 Laplacian with the mirrored border (``scipy`` mode "mirror") equals OpenCV's
    ``cv2.Laplacian(x, cv2.CV_64F)`` used by the reference code.
    """
    laplacian = scipy.ndimage.laplace(label_map.astype(np.float64), mode="mirror")
    return thin(np.abs(laplacian) > 0).astype(np.float32)


def context_normals_mask(label_map: np.ndarray, path: Path) -> np.ndarray:
    """(H, W) LabelMap -> (H, W) bool, True where the class keeps its distilled normal."""
    if label_map.size and (label_map.min() < 0 or label_map.max() > NUM_CONTEXT_CLASSES):
        raise CorruptFileError(
            f"{path}: LabelMap values {label_map.min()}..{label_map.max()} outside 0..{NUM_CONTEXT_CLASSES}"
        )
    return _NORMALS_VALID[label_map.astype(np.int64)]


def _mat_objects(mat: dict[str, Any], path: Path) -> np.ndarray:
    """The object array of a PASCAL-Part ``anno`` struct: ``mat['anno'][0][0][1][0]``."""
    anno = mat_field(mat, "anno", path)
    try:
        return anno[0][0][1][0]
    except (IndexError, TypeError, KeyError) as error:
        raise CorruptFileError(f"{path}: 'anno' does not have the PASCAL-Part layout ({error})") from error


def human_part_categories(path: Path) -> list[int]:
    """The object category ids of a human_parts .mat (-1 for an object with an empty mask)."""
    objects = _mat_objects(read_mat(path), path)
    with reading(path):
        return [int(obj[1][0][0]) if np.sum(obj[2]) > 0 else -1 for obj in objects]


def decode_human_parts(path: Path, image_hw: tuple[int, int] | None) -> np.ndarray:
    """A human_parts .mat -> (H, W) uint8 part groups 0..6; every person with parts is merged in.

    ``image_hw`` None (the image could not be read): the size of the first object's mask.
    """
    objects = _mat_objects(read_mat(path), path)
    with reading(path):
        if image_hw is None:
            image_hw = np.asarray(objects[0][2]).shape[:2] if len(objects) else (0, 0)
        target = np.zeros(image_hw, dtype=np.uint8)
        for obj in objects:
            if int(obj[1][0][0]) != PERSON_CLASS or len(obj[3]) == 0:
                continue
            check_hw(np.asarray(obj[2]), image_hw, path, "human_parts instance mask")
            for part in obj[3][0]:
                name = str(part[0][0])
                if name not in HUMAN_PART_GROUPS:
                    raise CorruptFileError(f"{path}: unknown person part {name!r}")
                mask = check_hw(np.asarray(part[1]), image_hw, path, f"human_parts mask of {name!r}")
                target[mask.astype(bool)] = HUMAN_PART_GROUPS[name]
    return target


def read_pascal_semseg(path: Path, hw: tuple[int, int] | None) -> np.ndarray:
    """``semseg/{VOC12,pascal-context}/<id>.png`` -> (H, W) uint8 classes 0..20, 255 = ignore."""
    return check_classes(check_hw(read_png(path, 1), hw, path, "semseg"), 21, path, "semseg")


def read_pascal_sal(path: Path, hw: tuple[int, int] | None) -> np.ndarray:
    """``sal_distill/<id>.png`` -> (H, W) uint8 ``png / 255 > 0.5``."""
    sal = check_hw(read_png(path, 1), hw, path, "sal")
    return (sal.astype(np.float32) / 255.0 > 0.5).astype(np.uint8)


def read_pascal_normals(path: Path, hw: tuple[int, int] | None) -> np.ndarray:
    """``normals_distill/<id>.png`` -> (H, W, 3) float32 ``2 * png / 255 - 1`` (before the LabelMap mask)."""
    return decode_normals_png(check_hw(read_png(path, 3), hw, path, "normals"))


def read_label_map(path: Path, hw: tuple[int, int] | None) -> np.ndarray:
    """``pascal-context/trainval/<id>.mat`` -> its (H, W) ``LabelMap``, values 0..459."""
    label_map = check_hw(np.asarray(mat_field(read_mat(path), "LabelMap", path)), hw, path, "LabelMap")
    if label_map.ndim != 2:
        raise CorruptFileError(f"{path}: LabelMap has shape {label_map.shape}, expected (H, W)")
    if not np.issubdtype(label_map.dtype, np.integer) and not np.array_equal(label_map, np.round(label_map)):
        raise CorruptFileError(f"{path}: LabelMap holds non-integer values (dtype {label_map.dtype})")
    if label_map.size and (label_map.min() < 0 or label_map.max() > NUM_CONTEXT_CLASSES):
        raise CorruptFileError(
            f"{path}: LabelMap values {label_map.min()}..{label_map.max()} outside 0..{NUM_CONTEXT_CLASSES}"
        )
    return label_map


PASCAL_FILES: dict[str, FileKind] = {
    "image": FileKind(("JPEGImages",), (".jpg",), read_image),
    "semseg": FileKind(("semseg/VOC12", "semseg/pascal-context"), (".png",), read_pascal_semseg),
    "human_parts": FileKind(("human_parts",), (".mat",), decode_human_parts),
    "sal": FileKind(("sal_distill",), (".png",), read_pascal_sal),
    "normals": FileKind(("normals_distill",), (".png",), read_pascal_normals),
    "label_map": FileKind(("pascal-context/trainval",), (".mat",), read_label_map),
}
"""Every kind of PASCAL_MT file, by key."""


class PascalContext(MultiTaskDataset):
    """PASCAL-Context multi-task (``PASCAL_MT``) as raw numpy samples / transformed torch samples.

    Args:
        root: the ``PASCAL_MT`` folder.
        split: ``ImageSets/Context/<split>.txt`` (train: 4,998 ids, val: 5,105).
        tasks: any subset of :attr:`supported_tasks`.
        transform: raw sample -> torch sample (see :mod:`tiger.data.transforms`); None only converts.
    """

    supported_tasks = ("semseg", "human_parts", "sal", "normals", "edge")
    num_semseg_classes = 21
    default_size = (512, 512)
    layout = PASCAL_LAYOUT
    split_file = "ImageSets/Context/{split}.txt"
    split_sizes = {"train": 4998, "val": 5105}
    file_kinds = PASCAL_FILES
    task_files = {
        "semseg": ("semseg",),
        "human_parts": ("human_parts",),
        "sal": ("sal",),
        "normals": ("normals", "label_map"),
        "edge": ("label_map",),
    }

    def __init__(
        self,
        root: str | Path,
        split: str,
        tasks: Sequence[str],
        transform: Callable[[RawSample], dict[str, Any]] | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        super().__init__(tasks, transform)
        self.root = check_root(root, "PASCAL_MT", PASCAL_LAYOUT)
        self.split = split
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.ids = read_split(self.root / self.split_file.format(split=split), PASCAL_LAYOUT)
        self.files = {
            key: resolve_files(self.root, self.ids, PASCAL_FILES[key], PASCAL_LAYOUT)
            for key in self.file_keys()
        }
        self.has_person: list[bool] = []
        if "human_parts" in self.tasks:
            categories = self._part_categories()
            self.has_person = [PERSON_CLASS in categories[i] for i in self.ids]

    def parts_cache(self) -> Path:
        """Where a category cache built here is kept: ``cache_dir``, else the user cache
        (``$XDG_CACHE_HOME/tiger``, default ``~/.cache/tiger``), one folder per data set folder."""
        base = self.cache_dir if self.cache_dir is not None else user_cache_dir("pascal_parts")
        return base / folder_key(self.root) / f"{self.split}.txt"

    def _read_categories(self, cache: Path) -> dict[str, list[int]] | None:
        """A category cache that lists exactly this split's ids, else None (a stale one is logged)."""
        if not cache.is_file():
            return None
        try:
            categories = json.loads(cache.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CorruptFileError(f"{cache} is not valid JSON ({error}); delete it to rebuild it") from error
        if isinstance(categories, dict) and sorted(categories) == sorted(self.ids):
            return categories
        log.info("%s does not list the ids of split %r; not using it", cache, self.split)
        return None

    def _part_categories(self) -> dict[str, list[int]]:
        """{id: [object category ids]}: the data set's ``ImageSets/Parts/<split>.txt`` if it fits, else our
        cache (:meth:`parts_cache`), else read from every human_parts file and written to our cache."""
        shipped = self._read_categories(self.root / "ImageSets" / "Parts" / f"{self.split}.txt")
        if shipped is not None:
            return shipped
        cache = self.parts_cache()
        cached = self._read_categories(cache)
        if cached is not None:
            return cached
        log.info("collecting the object categories of %d human_parts files into %s", len(self.ids), cache)
        categories = {
            i: human_part_categories(p) for i, p in zip(self.ids, self.files["human_parts"], strict=True)
        }
        lines = ",\n".join(f'\t"{i}": {json.dumps(c)}' for i, c in categories.items())
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            temporary = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
            temporary.write_text("{\n" + lines + "\n}\n")
            temporary.replace(cache)
        except OSError as error:
            log.warning("could not write the parts cache %s (%s); keeping it in memory", cache, error)
        return categories

    def load_raw(self, index: int) -> RawSample:
        image = read_image(self.files["image"][index])
        hw = image.shape[:2]
        raw: RawSample = {"image": image, "id": self.ids[index]}
        if "semseg" in self.tasks:
            raw["semseg"] = read_pascal_semseg(self.files["semseg"][index], hw)
        if "human_parts" in self.tasks:
            path = self.files["human_parts"][index]
            raw["human_parts"] = (
                decode_human_parts(path, hw) if self.has_person[index] else np.zeros(hw, dtype=np.uint8)
            )
        if "sal" in self.tasks:
            raw["sal"] = read_pascal_sal(self.files["sal"][index], hw)
        if "normals" in self.tasks or "edge" in self.tasks:
            path = self.files["label_map"][index]
            label_map = read_label_map(path, hw)
            if "edge" in self.tasks:
                raw["edge"] = edge_from_label_map(label_map)
                raw["edge_seism"] = seg2bmap(label_map).astype(np.uint8)
            if "normals" in self.tasks:
                normals = read_pascal_normals(self.files["normals"][index], hw)
                normals[~context_normals_mask(label_map, path)] = 0.0
                raw["normals"] = normals
        return raw
