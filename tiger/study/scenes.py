"""Scenes whose cues are factored into channels: the known-answer study's data.

Each sample draws three independent ray-cast scenes (:func:`tiger.data.synthetic.scenes.generate_scene`)
and shows one cue of each in one channel of the image:

=======  ======================  ======================================================  =============
channel  cue                     pixel value (uint8)                                     targets
=======  ======================  ======================================================  =============
R (0)    class identity, scene A  ``(class + 1) * 28``: one grey level per class          semseg
G (1)    geometry, scene B        fog ``255 exp(-depth / 4 m)``                           depth, normals
B (2)    outlines, scene C        255 on scene C's object boundaries, else 0               edge
=======  ======================  ======================================================  =============

The three scenes are independent draws, so a channel carries no information about the other channels'
targets: an expert that reads one channel is, by construction, unable to help outside its task group
(normals come from the depth's own geometry: the fog cue carries them). Each scene is also rolled
(shifted cyclically) by its own random offset before it is shown, so no task has a positional prior that an
uninformative but image-dependent expert could give away (rooms have floors at the bottom and walls above;
rolled, every class, depth and boundary is equally likely anywhere); the boundaries are those of the rolled
instances, seams included. Training draws keep the channels apart: horizontal flips only (no photometric
distortion, which would mix the channels, and no rescaling, which would change the depth target but not the
fog).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tiger.data import MultiTaskDataModule, MultiTaskDataset
from tiger.data.common import RawSample
from tiger.data.synthetic import SYNTHETIC_SPLIT_OFFSETS
from tiger.data.synthetic.scenes import (
    NUM_SCENE_CLASSES,
    SCENE_CLASSES,
    Scene,
    generate_scene,
    instance_boundaries,
)
from tiger.data.transforms import EvalTransform, TrainTransform
from tiger.metrics.boundary_ops import seg2bmap

STUDY_TASKS = ("semseg", "depth", "normals", "edge")
CUE_CHANNELS = {"semantics": 0, "geometry": 1, "boundary": 2}
"""The image channel of each cue."""
CLASS_LEVEL = 28  # grey level step between classes: 28, 56, ..., 224 for the 8 classes
FOG_DEPTH = 4.0  # metres: the fog's e-folding depth


def rolled(scene: Scene, shift: tuple[int, int]) -> Scene:
    """``scene`` shifted cyclically by ``shift`` (rows, columns), boundaries from the shifted instances."""
    roll = functools.partial(np.roll, shift=shift, axis=(0, 1))
    instance = roll(scene.instance)
    arrays = ("image", "semseg", "depth", "normals", "part_name", "parts", "sal")
    return dataclasses.replace(
        scene, instance=instance, edge=instance_boundaries(instance).astype(np.uint8),
        **{name: roll(getattr(scene, name)) for name in arrays},
    )  # fmt: skip


def factored_image(semantics: Scene, geometry: Scene, outlines: Scene) -> np.ndarray:
    """(H, W, 3) uint8: the class identity of one scene, the fog of a second, the outlines of a third."""
    red = (semantics.semseg.astype(np.int32) + 1) * CLASS_LEVEL
    green = np.round(255.0 * np.exp(-geometry.depth / FOG_DEPTH))
    blue = 255 * outlines.edge.astype(np.int32)
    return np.stack([red, green, blue], axis=-1).clip(0, 255).astype(np.uint8)


class FactoredScenes(MultiTaskDataset):
    """Samples of three independent scenes, one cue per channel (see the module docstring).

    Args:
        num_samples: the data set's length.
        size: (H, W) of the images.
        tasks: any of semseg, depth, normals, edge.
        seed: the scene stream.
        transform: raw sample -> torch sample; None only converts.
        first_index: the first sample of this split in the stream (:data:`SYNTHETIC_SPLIT_OFFSETS`).
    """

    supported_tasks = STUDY_TASKS
    num_semseg_classes = NUM_SCENE_CLASSES
    class_names = SCENE_CLASSES

    def __init__(
        self,
        num_samples: int,
        size: Sequence[int] = (64, 80),
        tasks: Sequence[str] = STUDY_TASKS,
        seed: int = 0,
        transform: Callable[[RawSample], dict[str, Any]] | None = None,
        first_index: int = 0,
    ) -> None:
        super().__init__(tasks, transform)
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.size = self.default_size = (int(size[0]), int(size[1]))
        self.seed, self.first_index = int(seed), int(first_index)
        self.ids = [f"factored_{self.seed}_{self.first_index + i:07d}" for i in range(num_samples)]
        self._raw: dict[int, RawSample] = {}  # rendering three scenes is the slow part: once per sample

    def scenes(self, index: int) -> tuple[Scene, Scene, Scene]:
        """The sample's three scenes, each rolled by its own offset: (class identity, geometry, outlines)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        number = 3 * (self.first_index + index)
        shifts = np.random.default_rng([self.seed, number]).integers(0, self.size, size=(3, 2))
        return tuple(  # type: ignore[return-value]
            rolled(generate_scene(self.seed, number + cue, self.size), (int(dy), int(dx)))
            for cue, (dy, dx) in enumerate(shifts)
        )

    def load_raw(self, index: int) -> RawSample:
        if index not in self._raw:
            semantics, geometry, outlines = self.scenes(index)
            targets = {
                "semseg": semantics.semseg,
                "depth": geometry.depth,
                "normals": geometry.normals,
                "edge": outlines.edge.astype(np.float32),
            }
            raw: RawSample = {"image": factored_image(semantics, geometry, outlines), "id": self.ids[index]}
            raw.update({task: targets[task] for task in self.tasks})
            if "edge" in self.tasks:  # the boundary metric's ground truth, as SEISM builds it
                raw["edge_seism"] = seg2bmap(outlines.instance).astype(np.uint8)
            self._raw[index] = raw
        return dict(self._raw[index])


class FactoredDataModule(MultiTaskDataModule):
    """The data module of the study: :class:`FactoredScenes` for training and validation, drawn with
    horizontal flips only (the other augmentations would mix or break the channels' cues).

    Takes the arguments of :class:`tiger.data.MultiTaskDataModule` with ``dataset="synthetic"`` (its metric
    settings) and ``synthetic={num_train, num_val, seed}``.
    """

    def _build(self, stage: str) -> MultiTaskDataset:
        if stage not in self.datasets:
            if stage == "train":
                transform: Callable = TrainTransform(
                    self.train_size, scale_range=(1.0, 1.0), photometric=False, seed=self.seed
                )
            else:
                transform = EvalTransform(self.eval_size)
            self.datasets[stage] = FactoredScenes(
                self.synthetic["num_train" if stage == "train" else "num_val"],
                self.synthetic["size"],
                self.tasks,
                self.synthetic["seed"],
                transform,
                first_index=SYNTHETIC_SPLIT_OFFSETS[stage],
            )
        return self.datasets[stage]
