"""The synthetic scenes as miniature NYUD_MT / PASCAL_MT trees on disk, in the real data sets' exact file
formats, so that the real readers can be tested end to end (:func:`write_nyud_tree`,
:func:`write_pascal_tree`). Class mapping (scene class -> dataset id):

============  ===============  =================  ====================
scene class   NYUD-40 (file)   VOC (PASCAL)       Context-459 LabelMap
============  ===============  =================  ====================
floor         2 floor          0 background       158 floor
wall          1 wall           0 background       440 wall
cabinet       3 cabinet        0 background       46 cabinet
table         7 table          11 diningtable     397 table
sofa          6 sofa           18 sofa            368 sofa
tvmonitor     25 television    20 tvmonitor       427 tvmonitor
pottedplant   40 otherprop     16 pottedplant     308 pottedplant (normals invalid)
person        31 person        15 person          284 person
============  ===============  =================  ====================

The NYUD trees have a frame of :func:`nyud_border` unlabelled pixels around each image, as the real
NYUD images have (white image, semseg 0, depth 0, normals 0, no edges), which exercises the ignore
handling. In the PASCAL trees the ``semseg/VOC12`` files (even image numbers) mark object boundary
pixels 255 and shadow a ``semseg/pascal-context`` file of the same id; the saliency png is a soft map
whose ``> 0.5`` threshold gives back the scene's mask.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.io
import scipy.ndimage
from PIL import Image

from tiger.data.pascal import VOC_CATEGORY_NAMES
from tiger.data.synthetic.scenes import (
    PART_NAMES,
    PERSON,
    Scene,
    generate_scene,
)

NYUD_CLASS_IDS = np.array([2, 1, 3, 7, 6, 25, 40, 31], dtype=np.uint8)
"""Scene class -> the NYUD-40 value stored in ``segmentation/<id>.png`` (1-based; 0 = unlabelled)."""
VOC_CLASS_IDS = np.array([0, 0, 0, 11, 18, 20, 16, 15], dtype=np.uint8)
"""Scene class -> VOC class (0 background, 15 person)."""
CONTEXT_CLASS_IDS = np.array([158, 440, 46, 397, 368, 427, 308, 284], dtype=np.uint16)
"""Scene class -> PASCAL-Context 459-class LabelMap id (308 pottedplant is outside the normals-valid list)."""


@dataclass(frozen=True)
class MiniatureTree:
    """A written tree: its root, the ids of each split, and how to regenerate each id's scene."""

    root: Path
    splits: dict[str, list[str]]
    seed: int
    size: tuple[int, int]
    persons: dict[str, int | None]  # id -> num_persons given to the generator
    indices: dict[str, int]  # id -> scene index

    def scene(self, image_id: str) -> Scene:
        """The ground truth scene behind ``image_id`` (before any file encoding)."""
        return generate_scene(self.seed, self.indices[image_id], self.size, self.persons[image_id])


def nyud_border(size: Sequence[int]) -> int:
    """Width in pixels of the unlabelled frame of a miniature NYUD image."""
    return max(1, min(size) // 48)


def encode_normals_png(normals: np.ndarray) -> np.ndarray:
    """(H, W, 3) unit normals (all-zero = invalid) -> uint8 ``round((n + 1) / 2 * 255)``, invalid -> 0."""
    png = np.round((normals + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
    png[~normals.any(-1)] = 0
    return png


def _save_png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path)


def _write_splits(folder: Path, splits: dict[str, list[str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split, ids in splits.items():
        (folder / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))


def _plan(
    num_train: int, num_val: int, id_format: str, persons: Callable[[int], int | None]
) -> tuple[dict[str, list[str]], dict[str, int], dict[str, int | None]]:
    if num_train < 1 or num_val < 0:
        raise ValueError(f"need num_train >= 1 and num_val >= 0, got {num_train}, {num_val}")
    ids = [id_format.format(i + 1) for i in range(num_train + num_val)]
    splits = {"train": ids[:num_train], "val": ids[num_train:]}
    return splits, {i: k for k, i in enumerate(ids)}, {i: persons(k) for k, i in enumerate(ids)}


def write_nyud_tree(
    root: str | Path,
    num_train: int,
    num_val: int,
    size: Sequence[int] = (48, 64),
    seed: int = 0,
    packaging: Literal["atrc", "invpt"] = "atrc",
) -> MiniatureTree:
    """Write synthetic scenes as a NYUD_MT tree (``packaging="atrc"``) or its InvPT copy (``"invpt"``).

    ``gt_sets/{train,val}.txt``; ``images`` (.jpg / .png); ``segmentation/*.png`` NYUD-40 values with 0 on
    the border; ``depth/*.npy``; ``normals`` (.npy float / .png); ``edge`` (.npy float / .png 0/255).
    """
    if packaging not in ("atrc", "invpt"):
        raise ValueError(f"packaging must be 'atrc' or 'invpt', got {packaging!r}")
    root, size = Path(root), (int(size[0]), int(size[1]))
    splits, indices, persons = _plan(num_train, num_val, "{:04d}", lambda k: None)
    for folder in ("images", "segmentation", "depth", "normals", "edge"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    _write_splits(root / "gt_sets", splits)
    tree = MiniatureTree(root, splits, seed, size, persons, indices)
    inner = np.zeros(size, dtype=bool)
    border = nyud_border(size)
    inner[border:-border, border:-border] = True
    for image_id in indices:
        scene = tree.scene(image_id)
        image = np.where(inner[..., None], scene.image, np.uint8(255))
        normals = np.where(inner[..., None], scene.normals, np.float32(0))
        edge = (scene.edge.astype(bool) & inner).astype(np.uint8)
        _save_png(root / "segmentation" / f"{image_id}.png", np.where(inner, NYUD_CLASS_IDS[scene.semseg], 0))
        np.save(root / "depth" / f"{image_id}.npy", np.where(inner, scene.depth, np.float32(0)))
        if packaging == "atrc":
            Image.fromarray(image).save(root / "images" / f"{image_id}.jpg", quality=95)
            np.save(root / "normals" / f"{image_id}.npy", normals)
            np.save(root / "edge" / f"{image_id}.npy", edge.astype(np.float32))
        else:
            _save_png(root / "images" / f"{image_id}.png", image)
            _save_png(root / "normals" / f"{image_id}.png", encode_normals_png(normals))
            _save_png(root / "edge" / f"{image_id}.png", edge * np.uint8(255))
    return tree


def soft_saliency(mask: np.ndarray) -> np.ndarray:
    """(H, W) {0, 1} -> uint8 soft map, >= 128 exactly inside the mask (128 / 127 at its boundary)."""
    inside = mask.astype(bool)
    if not inside.any():
        return np.zeros(mask.shape, dtype=np.uint8)
    if inside.all():
        return np.full(mask.shape, 255, dtype=np.uint8)
    dist_in = scipy.ndimage.distance_transform_edt(inside)
    dist_out = scipy.ndimage.distance_transform_edt(~inside)
    ramp_in = np.minimum((dist_in - 1) / 4, 1.0)
    ramp_out = np.minimum((dist_out - 1) / 4, 1.0)
    return np.round(np.where(inside, 128 + 127 * ramp_in, 127 - 127 * ramp_out)).astype(np.uint8)


def _anno(image_id: str, scene: Scene) -> np.ndarray:
    """The PASCAL-Part ``anno`` struct: imname, objects (class, classIndex, mask, parts (part_name, mask))."""
    objects = []
    for inst in sorted(set(np.unique(scene.instance).tolist())):
        voc = int(VOC_CLASS_IDS[scene.instance_class[inst]])
        if voc == 0:
            continue
        mask = scene.instance == inst
        parts: np.ndarray = np.zeros((0, 0))
        if voc == VOC_CLASS_IDS[PERSON]:
            names = [k for k in np.unique(scene.part_name[mask]).tolist() if k > 0]
            parts = np.empty((1, len(names)), dtype=[("part_name", "O"), ("mask", "O")])
            for j, k in enumerate(names):
                parts[0, j] = (PART_NAMES[k], (mask & (scene.part_name == k)).astype(np.uint8))
        objects.append(
            (VOC_CATEGORY_NAMES[voc], np.array([[voc]], dtype=np.uint8), mask.astype(np.uint8), parts)
        )
    array = np.empty(
        (1, len(objects)), dtype=[("class", "O"), ("classIndex", "O"), ("mask", "O"), ("parts", "O")]
    )
    for j, obj in enumerate(objects):
        array[0, j] = obj
    anno = np.empty((1, 1), dtype=[("imname", "O"), ("objects", "O")])
    anno[0, 0] = (image_id, array)
    return anno


def write_pascal_tree(
    root: str | Path, num_train: int, num_val: int, size: Sequence[int] = (48, 64), seed: int = 0
) -> MiniatureTree:
    """Write synthetic scenes as a PASCAL_MT tree in the real file formats.

    ``ImageSets/Context/{train,val}.txt`` (no ``ImageSets/Parts``: the reader writes it on first use),
    ``JPEGImages/*.jpg``, ``semseg/VOC12/*.png`` (even image numbers, object boundaries 255) and
    ``semseg/pascal-context/*.png`` (all), ``pascal-context/trainval/*.mat`` (``LabelMap``),
    ``human_parts/*.mat`` (``anno``), ``normals_distill/*.png``, ``sal_distill/*.png``. Scene k has
    (1, 2, 0)[k % 3] people.
    """
    root, size = Path(root), (int(size[0]), int(size[1]))
    splits, indices, persons = _plan(num_train, num_val, "2008_{:06d}", lambda k: (1, 2, 0)[k % 3])
    folders = (
        "JPEGImages",
        "semseg/VOC12",
        "semseg/pascal-context",
        "pascal-context/trainval",
        "human_parts",
    )
    for folder in (*folders, "normals_distill", "sal_distill"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    _write_splits(root / "ImageSets" / "Context", splits)
    tree = MiniatureTree(root, splits, seed, size, persons, indices)
    for image_id, k in indices.items():
        scene = tree.scene(image_id)
        Image.fromarray(scene.image).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        voc = VOC_CLASS_IDS[scene.semseg]
        _save_png(root / "semseg" / "pascal-context" / f"{image_id}.png", voc)
        if k % 2 == 1:  # image numbers are 1-based: even numbers have a VOC12 file
            _save_png(root / "semseg" / "VOC12" / f"{image_id}.png", pascal_voc_semseg(scene))
        label_map = CONTEXT_CLASS_IDS[scene.semseg]
        scipy.io.savemat(root / "pascal-context" / "trainval" / f"{image_id}.mat", {"LabelMap": label_map})
        scipy.io.savemat(root / "human_parts" / f"{image_id}.mat", {"anno": _anno(image_id, scene)})
        _save_png(root / "normals_distill" / f"{image_id}.png", encode_normals_png(scene.normals))
        _save_png(root / "sal_distill" / f"{image_id}.png", soft_saliency(scene.sal))
    return tree


def pascal_voc_semseg(scene: Scene) -> np.ndarray:
    """The VOC12-style semseg of a scene: VOC ids, 255 on the boundary pixels of VOC objects."""
    voc = VOC_CLASS_IDS[scene.semseg]
    voc[scene.edge.astype(bool) & (voc > 0)] = 255
    return voc
