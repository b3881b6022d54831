"""Training and test-time transforms (PROTOCOL.md section 2): raw numpy sample -> torch sample.

Training, in order: random scale in [0.5, 2.0] (image bilinear, every label nearest, depth divided by
the scale); random crop to the train size, re-drawn up to 10 times until no semseg class covers 75%
or more of the valid pixels; horizontal flip with p = 0.5 (normals x negated); the mmseg photometric
distortion on the uint8 image; the image to [0, 1]; centre padding to the train size (255 for
semseg / human_parts / sal / edge, 0 for depth / normals, and the ImageNet mean colour
:data:`IMAGE_PAD_COLOUR` for the image: InvPT and ATRC pad the normalised image with 0, which is that
colour, and it is every expert's normalised zero within 0.005). Test time: centre padding only.
Metric-only ground truths (:data:`METRIC_ONLY_KEYS`, e.g. ``edge_seism``) are padded with 255 at test
time and dropped by the training chain.

Finally :func:`to_sample` converts to the contract of :mod:`tiger.tasks` and, as the reference
code does, ignores a human_parts map that holds only 0 and 255 (no visible person part) entirely.

Randomness comes from a :class:`numpy.random.Generator`: pass ``rng`` to a call, or let the transform
make its own (from ``seed`` or ``torch.initial_seed()``, and per DataLoader worker from the worker's
seed, so workers never repeat each other and runs seeded with ``lightning.seed_everything(...,
workers=True)`` repeat exactly). OpenCV does the resizing and the HSV conversion, matching the
reference (``cv2.INTER_LINEAR`` / ``cv2.INTER_NEAREST``, OpenCV's 0..180 hue).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch

from tiger import options
from tiger.tasks import IGNORE_INDEX, TASKS

RawSample = dict[str, Any]
METRIC_ONLY_KEYS = ("edge_seism",)
"""Ground truths that only the metrics read (the boundary metric's SEISM map): moved, never augmented."""
IMAGE_PAD_COLOUR = (0.485, 0.456, 0.406)
"""The image padding colour in [0, 1]: the ImageNet mean (``timm.data.IMAGENET_DEFAULT_MEAN``), i.e. 0 after
the normalisation InvPT / ATRC pad after; the OpenAI CLIP mean differs from it by less than 0.005."""


def _arrays(raw: RawSample) -> list[str]:
    """The image, the targets of the registered tasks and the metric-only ground truths in ``raw`` (what
    every geometric step moves)."""
    return [key for key in ("image", *TASKS, *METRIC_ONLY_KEYS) if key in raw]


def pad_value(key: str, dtype: np.dtype) -> np.ndarray:
    """The padding value of ``key`` for an array of ``dtype``: the image colour (as uint8 ``round(255 c)``
    for a uint8 image, in [0, 1] otherwise), ignored for a metric-only ground truth, else the task entry's
    (ignored target pixels)."""
    if key == "image":
        value = np.asarray(IMAGE_PAD_COLOUR, dtype=np.float64)
        if np.dtype(dtype) == np.uint8:
            value = np.round(value * 255.0)
    elif key in METRIC_ONLY_KEYS:
        value = np.asarray(IGNORE_INDEX, dtype=np.float64)
    else:
        value = np.asarray(TASKS[key].pad_value, dtype=np.float64)
    return value.astype(dtype)


def rescale(raw: RawSample, scale: float) -> RawSample:
    """Resize by ``scale`` to ``(int(H * scale), int(W * scale))``; each task entry adjusts its values
    (:meth:`tiger.tasks.Task.rescale_target`: depth is divided by ``scale``)."""
    height, width = raw["image"].shape[:2]
    new_hw = (max(1, int(height * scale)), max(1, int(width * scale)))
    out = dict(raw)
    for key in _arrays(raw):
        mode = cv2.INTER_LINEAR if key == "image" else cv2.INTER_NEAREST
        resized = cv2.resize(raw[key], new_hw[::-1], interpolation=mode)
        out[key] = resized if key == "image" else TASKS[key].rescale_target(resized, scale)
    return out


def random_scale(
    raw: RawSample, rng: np.random.Generator, scale_range: tuple[float, float] = (0.5, 2.0)
) -> RawSample:
    return rescale(raw, float(rng.uniform(*scale_range)))


def crop(raw: RawSample, box: tuple[int, int, int, int]) -> RawSample:
    """Crop every array to ``box`` = (top, left, height, width)."""
    top, left, height, width = box
    out = dict(raw)
    for key in _arrays(raw):
        out[key] = raw[key][top : top + height, left : left + width]
    return out


def _random_box(
    hw: tuple[int, int], size: tuple[int, int], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    height, width = min(hw[0], size[0]), min(hw[1], size[1])
    top = int(rng.integers(0, hw[0] - height + 1))
    left = int(rng.integers(0, hw[1] - width + 1))
    return top, left, height, width


def max_class_ratio(semseg: np.ndarray) -> float:
    """The largest share of one class among the non-ignored pixels (1.0 if fewer than two classes)."""
    counts = np.bincount(semseg.ravel(), minlength=256)[:IGNORE_INDEX]
    present = counts[counts > 0]
    if len(present) < 2:
        return 1.0
    return float(present.max() / present.sum())


def random_crop(
    raw: RawSample,
    size: tuple[int, int],
    rng: np.random.Generator,
    cat_max_ratio: float = 0.75,
    attempts: int = 10,
) -> RawSample:
    """Random crop of at most ``size``; with semseg, re-drawn up to ``attempts`` times (mmseg rule).

    A crop is accepted when it holds at least two classes and the largest covers less than
    ``cat_max_ratio`` of the valid pixels; after ``attempts`` rejections the next draw is kept.
    """
    hw = raw["image"].shape[:2]
    box = _random_box(hw, size, rng)
    if cat_max_ratio < 1.0 and "semseg" in raw:
        for _ in range(attempts):
            top, left, height, width = box
            if max_class_ratio(raw["semseg"][top : top + height, left : left + width]) < cat_max_ratio:
                break
            box = _random_box(hw, size, rng)
    return crop(raw, box)


def horizontal_flip(raw: RawSample) -> RawSample:
    """Mirror every array left-right; each task entry adjusts its values
    (:meth:`tiger.tasks.Task.flip_target`: the x component of the normals changes sign)."""
    out = dict(raw)
    for key in _arrays(raw):
        mirrored = np.ascontiguousarray(raw[key][:, ::-1])
        out[key] = mirrored if key == "image" else TASKS[key].flip_target(mirrored)
    return out


def random_horizontal_flip(raw: RawSample, rng: np.random.Generator, prob: float = 0.5) -> RawSample:
    return horizontal_flip(raw) if rng.random() < prob else raw


def _convert(values: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    return np.clip(values.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def photometric_distortion(
    image: np.ndarray,
    rng: np.random.Generator,
    brightness_delta: float = 32,
    contrast_range: tuple[float, float] = (0.5, 1.5),
    saturation_range: tuple[float, float] = (0.5, 1.5),
    hue_delta: int = 18,
) -> np.ndarray:
    """mmseg's ``PhotoMetricDistortion`` on an (H, W, 3) uint8 RGB image, each step with p = 0.5.

    Brightness (+ uniform(-32, 32)), contrast (x uniform(0.5, 1.5)) first or last at random,
    saturation (HSV S x uniform(0.5, 1.5)), hue (HSV H + randint(-18, 18) mod 180); uint8 after each.
    """
    image = np.asarray(image, dtype=np.uint8)
    if rng.random() < 0.5:
        image = _convert(image, beta=rng.uniform(-brightness_delta, brightness_delta))
    contrast_first = rng.random() < 0.5

    def contrast(img: np.ndarray) -> np.ndarray:
        return _convert(img, alpha=rng.uniform(*contrast_range)) if rng.random() < 0.5 else img

    if contrast_first:
        image = contrast(image)
    if rng.random() < 0.5:
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        hsv[..., 1] = _convert(hsv[..., 1], alpha=rng.uniform(*saturation_range))
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if rng.random() < 0.5:
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(np.int64) + int(rng.integers(-hue_delta, hue_delta))) % 180
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if not contrast_first:
        image = contrast(image)
    return image


def image_to_unit(raw: RawSample) -> RawSample:
    """The uint8 image -> float32 in [0, 1]."""
    out = dict(raw)
    out["image"] = raw["image"].astype(np.float32) * np.float32(1.0 / 255.0)
    return out


def center_pad(raw: RawSample, size: tuple[int, int]) -> tuple[RawSample, list[int]]:
    """Centre-pad every array to at least ``size`` with :func:`pad_value`.

    Returns the padded sample and the valid box [top, left, height, width] of the unpadded content.
    """
    height, width = raw["image"].shape[:2]
    out_h, out_w = max(size[0], height), max(size[1], width)
    top, left = (out_h - height) // 2, (out_w - width) // 2
    out = dict(raw)
    if (out_h, out_w) != (height, width):
        for key in _arrays(raw):
            array = raw[key]
            padded = np.empty((out_h, out_w, *array.shape[2:]), dtype=array.dtype)
            padded[...] = pad_value(key, array.dtype)
            padded[top : top + height, left : left + width] = array
            out[key] = padded
    return out, [top, left, height, width]


def to_sample(
    raw: RawSample, valid_box: Sequence[int] | None = None, ignore_empty_parts: bool = True
) -> dict[str, Any]:
    """Numpy sample -> torch sample of the contract in :mod:`tiger.tasks`.

    ``image`` (3, H, W) float32 in [0, 1] (a uint8 image is divided by 255); semseg / human_parts /
    sal (H, W) int64; edge (H, W) float32; edge_seism (H, W) uint8 {0, 1}, 255 = padding; depth
    (1, H, W); normals (3, H, W); ``meta`` = {"id": str,
    "valid_box": int64 [top, left, height, width]} (the whole frame when ``valid_box`` is None).
    """
    image = raw["image"]
    if image.dtype == np.uint8:
        image = image.astype(np.float32) * np.float32(1.0 / 255.0)
    height, width = image.shape[:2]
    sample: dict[str, Any] = {
        "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), np.float32))
    }
    for key in _arrays(raw)[1:]:
        if key in METRIC_ONLY_KEYS:
            sample[key] = torch.from_numpy(np.ascontiguousarray(raw[key], dtype=np.uint8))
            continue
        task = TASKS[key]
        target = task.target_tensor(raw[key])
        if ignore_empty_parts and task.ignore_whole_target(raw[key]):
            target = torch.full_like(target, task.pad_value)
        sample[key] = target
    box = list(valid_box) if valid_box is not None else [0, 0, height, width]
    sample["meta"] = {"id": str(raw["id"]), "valid_box": torch.tensor(box, dtype=torch.int64)}
    return sample


@dataclass
class _SeededRandom:
    """Owns the transform's Generator: from ``seed`` (or torch's seed), re-made in each DataLoader worker."""

    seed: int | None = None
    _rng: np.random.Generator | None = field(default=None, init=False, repr=False)
    _owner: tuple[int, int] | None = field(default=None, init=False, repr=False)

    def generator(self) -> np.random.Generator:
        info = torch.utils.data.get_worker_info()
        owner = (-1, 0) if info is None else (info.id, info.seed)
        if self._rng is None or owner != self._owner:
            entropy = [] if self.seed is None else [self.seed]
            if info is not None:
                entropy.append(info.seed)
            elif self.seed is None:
                entropy.append(torch.initial_seed())
            self._rng = np.random.default_rng(entropy)
            self._owner = owner
        return self._rng


@dataclass
class TrainTransform:
    """The training chain of PROTOCOL.md section 2 (see the module docstring).

    Args:
        size: the train size (H, W) (NYUD 448x576, PASCAL 512x512).
        seed: seeds the Generator (None: ``torch.initial_seed()``); inside DataLoader workers it is
            combined with the worker's seed. Training through :class:`tiger.data.MultiTaskDataModule`
            passes ``rng`` instead: one generator per draw (:mod:`tiger.data.sampling`), so a resumed run
            repeats the uninterrupted run's augmentations.
    """

    size: tuple[int, int]
    scale_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    crop_attempts: int = 10
    flip_prob: float = 0.5
    photometric: bool = True
    ignore_empty_parts: bool = True
    seed: int | None = None
    _random: _SeededRandom = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.size = options.size(self.size, "size")  # never truncated: 4.5 is an error
        self._random = _SeededRandom(self.seed)

    def __call__(self, raw: RawSample, rng: np.random.Generator | None = None) -> dict[str, Any]:
        rng = rng if rng is not None else self._random.generator()
        raw = {key: value for key, value in raw.items() if key not in METRIC_ONLY_KEYS}
        raw = random_scale(raw, rng, self.scale_range)
        raw = random_crop(raw, self.size, rng, self.cat_max_ratio, self.crop_attempts)
        raw = random_horizontal_flip(raw, rng, self.flip_prob)
        if self.photometric:
            raw = {**raw, "image": photometric_distortion(raw["image"], rng)}
        raw, box = center_pad(image_to_unit(raw), self.size)
        return to_sample(raw, box, self.ignore_empty_parts)


@dataclass
class EvalTransform:
    """Test time: centre padding to ``size`` only (NYUD 448x576, PASCAL 512x512).

    An image larger than ``size`` raises a ``ValueError`` naming it: nothing is resized at test time.
    """

    size: tuple[int, int]
    ignore_empty_parts: bool = True

    def __post_init__(self) -> None:
        self.size = options.size(self.size, "size")  # never truncated: 4.5 is an error

    def __call__(self, raw: RawSample) -> dict[str, Any]:
        height, width = raw["image"].shape[:2]
        if height > self.size[0] or width > self.size[1]:
            raise ValueError(
                f"image {raw['id']!r} is {height}x{width}, larger than the evaluation size "
                f"{self.size[0]}x{self.size[1]}; test-time images are only padded, never resized: "
                f"set eval_size to at least {max(height, self.size[0])}x{max(width, self.size[1])}"
            )
        raw, box = center_pad(image_to_unit(raw), self.size)
        return to_sample(raw, box, self.ignore_empty_parts)
