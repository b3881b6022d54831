"""One entry per dense prediction task: channels, target format, instruction, loss weight, colour map.

Target formats in a batch (the key is the task name; ``255`` / zero marks pixels to ignore):

============  ==================  ===========  ==========================================
task          target              dtype        ignored where
============  ==================  ===========  ==========================================
semseg        (B, H, W)           int64        == 255
human_parts   (B, H, W)           int64        == 255
sal           (B, H, W)           int64 {0,1}  == 255
edge          (B, H, W)           float {0,1}  == 255
depth         (B, 1, H, W)        float (m)    == 0
normals       (B, 3, H, W)        float        all three components == 0
============  ==================  ===========  ==========================================

A task of :data:`METRIC_TARGET_KEYS` is scored against another ground truth than its training target:
``edge`` against ``edge_seism`` (B, H, W) uint8 {0, 1}, 255 = padding, SEISM's ``seg2bmap`` of the
data set's label image (:func:`metric_target` picks it).

Model outputs are raw logits (B, C, H, W) with ``C = Task.channels``; :meth:`Task.postprocess` turns
them into predictions in the user's units (class maps, metres, unit normals, probabilities), which is
what the metrics and the prediction CLI consume.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

IGNORE_INDEX = 255

TASK_NAMES = ("semseg", "human_parts", "sal", "edge", "normals", "depth")

DEFAULT_INSTRUCTIONS: dict[str, str] = {
    "semseg": "Assign a semantic category label to every pixel of the image.",
    "human_parts": "Segment the human body parts such as head, torso, arms and legs at every pixel.",
    "sal": "Highlight the most visually salient object that attracts human attention.",
    "edge": "Detect the object boundaries and contours in the image.",
    "normals": "Estimate the 3D surface normal orientation at every pixel.",
    "depth": "Estimate the metric distance from the camera to the scene at every pixel.",
}

NUM_HUMAN_PARTS = 7

METRIC_TARGET_KEYS: dict[str, str] = {"edge": "edge_seism"}
"""Task -> the batch key of its metric's ground truth, where that is not the training target."""


def metric_target(task_name: str, batch: Mapping[str, Any]) -> Tensor:
    """The ground truth that ``task_name``'s metric scores against: ``batch[METRIC_TARGET_KEYS[task]]`` or
    ``batch[task]``. A missing key is a ``KeyError`` naming it (never a silent fall-back)."""
    key = METRIC_TARGET_KEYS.get(task_name, task_name)
    if key not in batch:
        raise KeyError(
            f"the batch has no {key!r}, the metric ground truth of task {task_name!r}; it has keys "
            f"{sorted(batch)} (the data sets of tiger.data provide it)"
        )
    return batch[key]


@dataclass(frozen=True)
class Task:
    """A dense prediction task.

    Attributes:
        name: one of :data:`TASK_NAMES`.
        channels: number of output channels of its head.
        instruction: the natural-language instruction embedded by Sentence-BERT (eq. 3).
        weight: its lambda_j in the total loss (eq. 14).
    """

    name: str
    channels: int
    instruction: str
    weight: float = 1.0

    @property
    def is_classification(self) -> bool:
        return self.name in ("semseg", "human_parts")

    def postprocess(self, logits: Tensor) -> Tensor:
        """Raw head output (B, C, H, W) -> prediction in the user's units.

        semseg / human_parts: class map (B, H, W) int64; sal: foreground probability (B, H, W);
        edge: boundary probability (B, H, W); normals: unit vectors (B, 3, H, W); depth: metres
        (B, 1, H, W), clamped to be positive.
        """
        if self.is_classification:
            return logits.argmax(1)
        if self.name == "sal":
            return logits.softmax(1)[:, 1]
        if self.name == "edge":
            return logits.sigmoid()[:, 0]
        if self.name == "normals":
            return unit_vectors(logits)
        if self.name == "depth":
            return logits.clamp_min(1e-6)
        raise AssertionError(self.name)

    def valid_mask(self, target: Tensor) -> Tensor:
        """Target in the format above -> boolean mask (B, H, W) of the pixels that count."""
        if self.name == "depth":
            return target[:, 0] > 0
        if self.name == "normals":
            return target.abs().sum(1) > 0
        return target != IGNORE_INDEX


def unit_vectors(vectors: Tensor, eps: float = 1e-12) -> Tensor:
    """``vectors`` (B, C, H, W) scaled to unit length along C: ``F.normalize(vectors, dim=1)``, same values
    and gradients, written out because ``F.normalize`` over the channel dim is ~50x slower on CPU."""
    return vectors * torch.rsqrt(vectors.square().sum(1, keepdim=True).clamp_min(eps * eps))


def make_task(
    name: str, *, num_classes: int | None = None, instruction: str | None = None, weight: float = 1.0
) -> Task:
    """Build a :class:`Task` by name.

    Args:
        name: a task name; an unknown name raises a ``ValueError`` listing the known ones.
        num_classes: the number of semantic classes, required for ``semseg`` (NYUD 40, PASCAL 21).
        instruction: overrides :data:`DEFAULT_INSTRUCTIONS`.
        weight: the loss weight lambda_j (eq. 14).
    """
    if name not in TASK_NAMES:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASK_NAMES)}")
    fixed = {"human_parts": NUM_HUMAN_PARTS, "sal": 2, "edge": 1, "normals": 3, "depth": 1}
    if name == "semseg":
        if not num_classes or num_classes < 2:
            raise ValueError(f"task 'semseg' needs num_classes >= 2, got {num_classes!r}")
        channels = num_classes
    else:
        channels = fixed[name]
    return Task(name, channels, instruction or DEFAULT_INSTRUCTIONS[name], float(weight))


def palette(num_classes: int) -> np.ndarray:
    """The PASCAL VOC colour map: (num_classes, 3) uint8, class 0 black, then bit-interleaved colours."""
    colours = np.zeros((num_classes, 3), dtype=np.uint8)
    for index in range(num_classes):
        label, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((label >> 0) & 1) << shift
            g |= ((label >> 1) & 1) << shift
            b |= ((label >> 2) & 1) << shift
            label >>= 3
        colours[index] = (r, g, b)
    return colours
