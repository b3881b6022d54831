"""PASCAL-Context multi-task reader (the ``PASCAL_MT`` folder; PROTOCOL.md sections 1-2).

Tasks: semseg (21 VOC classes), human_parts (7 = background + 6 part groups), sal, normals, edge.
Decoding, per task:

* semseg: ``semseg/VOC12/<id>.png`` if present, else ``semseg/pascal-context/<id>.png``; 0..20, 255 ignore.
* human_parts: ``human_parts/<id>.mat``, struct ``anno``; every person object (class 15) that has parts
  contributes its part masks, merged into the 6 groups of :data:`HUMAN_PART_GROUPS` (later persons
  overwrite earlier ones where they overlap). An image without a person (per the
  ``ImageSets/Parts/<split>.txt`` category cache, written on first use) is all background; the
  transforms then ignore a map that is all 0/255 entirely.
* sal: ``sal_distill/<id>.png / 255 > 0.5``.
* normals: ``2 * normals_distill/<id>.png / 255 - 1``, zeroed (invalid) where the ``LabelMap`` of
  ``pascal-context/trainval/<id>.mat`` is not one of :data:`NORMALS_VALID_CONTEXT_IDS`.
* edge: ``thin(|Laplacian(LabelMap)| > 0)`` (3x3 Laplacian, mirrored border as OpenCV's default).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.ndimage
from skimage.morphology import thin

from tiger.data.common import (
    DOWNLOAD_HINT,
    CorruptFileError,
    DatasetLayoutError,
    MultiTaskDataset,
    RawSample,
    check_classes,
    check_hw,
    check_root,
    decode_normals_png,
    mat_field,
    read_image,
    read_mat,
    read_png,
    read_split,
    reading,
    resolve_files,
)

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
  ImageSets/Parts/{train,val}.txt       JSON {id: [object category ids]} (written on first use)
  JPEGImages/<id>.jpg
  semseg/VOC12/<id>.png                 0..20, 255 = ignore (else semseg/pascal-context/<id>.png)
  human_parts/<id>.mat                  struct 'anno' (PASCAL-Part objects and parts)
  sal_distill/<id>.png
  normals_distill/<id>.png
  pascal-context/trainval/<id>.mat      'LabelMap' (459 Context classes): edge, normals mask"""

_TASK_FOLDERS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "human_parts": (("human_parts", (".mat",)),),
    "sal": (("sal_distill", (".png",)),),
    "normals": (("normals_distill", (".png",)), ("pascal-context/trainval", (".mat",))),
    "edge": (("pascal-context/trainval", (".mat",)),),
}


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


def decode_human_parts(path: Path, image_hw: tuple[int, int]) -> np.ndarray:
    """A human_parts .mat -> (H, W) uint8 part groups 0..6; every person with parts is merged in."""
    objects = _mat_objects(read_mat(path), path)
    target = np.zeros(image_hw, dtype=np.uint8)
    with reading(path):
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

    def __init__(
        self,
        root: str | Path,
        split: str,
        tasks: Sequence[str],
        transform: Callable[[RawSample], dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(tasks, transform)
        self.root = check_root(root, "PASCAL_MT", PASCAL_LAYOUT)
        self.split = split
        self.ids = read_split(self.root / "ImageSets" / "Context" / f"{split}.txt", PASCAL_LAYOUT)
        self.images = resolve_files(self.root, self.ids, "JPEGImages", (".jpg",), PASCAL_LAYOUT)
        self.files: dict[str, list[Path]] = {}
        if "semseg" in self.tasks:
            self.files["semseg"] = self._semseg_files()
        for task in self.tasks:
            for folder, extensions in _TASK_FOLDERS.get(task, ()):
                self.files[folder] = resolve_files(self.root, self.ids, folder, extensions, PASCAL_LAYOUT)
        self.has_person: list[bool] = []
        if "human_parts" in self.tasks:
            categories = self._part_categories()
            self.has_person = [PERSON_CLASS in categories[i] for i in self.ids]

    def _semseg_files(self) -> list[Path]:
        voc, context = self.root / "semseg" / "VOC12", self.root / "semseg" / "pascal-context"
        if not voc.is_dir() and not context.is_dir():
            raise DatasetLayoutError(
                f"missing folders {voc} and {context}; expected layout:\n{PASCAL_LAYOUT}\n{DOWNLOAD_HINT}"
            )
        files, missing = [], []
        for image_id in self.ids:
            candidates = (voc / f"{image_id}.png", context / f"{image_id}.png")
            found = next((p for p in candidates if p.is_file()), None)
            files.append(found)
            if found is None:
                missing.append(f"{candidates[0]} (or {candidates[1]})")
        if missing:
            shown = "\n  ".join(missing[:5])
            raise DatasetLayoutError(f"{len(missing)} missing semseg file(s):\n  {shown}")
        return files

    def _part_categories(self) -> dict[str, list[int]]:
        """The ``ImageSets/Parts/<split>.txt`` cache {id: [category ids]} (rebuilt if absent or stale)."""
        cache = self.root / "ImageSets" / "Parts" / f"{self.split}.txt"
        if cache.is_file():
            try:
                categories = json.loads(cache.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise CorruptFileError(
                    f"{cache} is not valid JSON ({error}); delete it to rebuild it"
                ) from error
            if sorted(categories) == sorted(self.ids):
                return categories
            log.info("%s does not list the ids of split %r; rebuilding it", cache, self.split)
        log.info("collecting the object categories of %d human_parts files into %s", len(self.ids), cache)
        categories = {
            i: human_part_categories(p) for i, p in zip(self.ids, self.files["human_parts"], strict=True)
        }
        lines = ",\n".join(f'\t"{i}": {json.dumps(c)}' for i, c in categories.items())
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text("{\n" + lines + "\n}\n")
        except OSError as error:
            log.warning("could not write the parts cache %s (%s); keeping it in memory", cache, error)
        return categories

    def load_raw(self, index: int) -> RawSample:
        image = read_image(self.images[index])
        hw = image.shape[:2]
        raw: RawSample = {"image": image, "id": self.ids[index]}
        if "semseg" in self.tasks:
            path = self.files["semseg"][index]
            label = check_hw(read_png(path, 1), hw, path, "semseg")
            raw["semseg"] = check_classes(label, self.num_semseg_classes, path, "semseg")
        if "human_parts" in self.tasks:
            path = self.files["human_parts"][index]
            raw["human_parts"] = (
                decode_human_parts(path, hw) if self.has_person[index] else np.zeros(hw, dtype=np.uint8)
            )
        if "sal" in self.tasks:
            path = self.files["sal_distill"][index]
            sal = check_hw(read_png(path, 1), hw, path, "sal")
            raw["sal"] = (sal.astype(np.float32) / 255.0 > 0.5).astype(np.uint8)
        if "normals" in self.tasks or "edge" in self.tasks:
            path = self.files["pascal-context/trainval"][index]
            label_map = check_hw(
                np.asarray(mat_field(read_mat(path), "LabelMap", path)), hw, path, "LabelMap"
            )
            if label_map.ndim != 2:
                raise CorruptFileError(f"{path}: LabelMap has shape {label_map.shape}, expected (H, W)")
            if "edge" in self.tasks:
                raw["edge"] = edge_from_label_map(label_map)
            if "normals" in self.tasks:
                png_path = self.files["normals_distill"][index]
                normals = decode_normals_png(check_hw(read_png(png_path, 3), hw, png_path, "normals"))
                normals[~context_normals_mask(label_map, path)] = 0.0
                raw["normals"] = normals
        return raw
