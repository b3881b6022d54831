"""Synthetic multi-task scenes as a Dataset: the embedded default (no download).

Procedural rooms from :mod:`tiger.data.synthetic.scenes`, all six tasks consistent because they come from
one ray-cast scene, with the 8 classes of :data:`~tiger.data.synthetic.scenes.SCENE_CLASSES`. The same
scenes written in the real data sets' file formats: :mod:`tiger.data.synthetic.trees`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tiger.data.common import MultiTaskDataset, RawSample
from tiger.data.synthetic.scenes import (
    NUM_SCENE_CLASSES,
    SCENE_CLASSES,
    Scene,
    generate_scene,
)
from tiger.metrics.boundary_ops import seg2bmap
from tiger.tasks import TASK_NAMES

SYNTHETIC_SPLIT_OFFSETS = {"train": 0, "val": 1_000_000, "test": 1_000_000}
"""First scene index of each split: train and val scenes never coincide."""


class SyntheticScenes(MultiTaskDataset):
    """Procedural scenes, deterministic per (seed, first_index + index, size).

    Args:
        num_samples: the dataset length.
        size: (H, W) of the rendered images.
        tasks: any subset of the six tasks.
        seed: the scene stream.
        transform: raw sample -> torch sample (see :mod:`tiger.data.transforms`); None only converts.
        first_index: index of the first scene in the stream (see :data:`SYNTHETIC_SPLIT_OFFSETS`).
        cache: keep every rendered scene in memory (about 0.2 MB a scene at 64x80), so later epochs do not
            render it again.
    """

    supported_tasks = TASK_NAMES
    num_semseg_classes = NUM_SCENE_CLASSES
    class_names = SCENE_CLASSES

    def __init__(
        self,
        num_samples: int,
        size: Sequence[int] = (64, 80),
        tasks: Sequence[str] = TASK_NAMES,
        seed: int = 0,
        transform: Callable[[RawSample], dict[str, Any]] | None = None,
        first_index: int = 0,
        cache: bool = False,
    ) -> None:
        super().__init__(tasks, transform)
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if len(size) != 2 or min(size) < 8:
            raise ValueError(f"size must be (H, W) with both >= 8, got {size}")
        self.size = (int(size[0]), int(size[1]))
        self.default_size = self.size
        self.seed, self.first_index = int(seed), int(first_index)
        self.ids = [f"scene_{self.seed}_{self.first_index + i:07d}" for i in range(num_samples)]
        self.cache: dict[int, Scene] | None = {} if cache else None

    def scene(self, index: int) -> Scene:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} scenes")
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        scene = generate_scene(self.seed, self.first_index + index, self.size)
        if self.cache is not None:
            self.cache[index] = scene
        return scene

    def load_raw(self, index: int) -> RawSample:
        scene = self.scene(index)
        raw: RawSample = {"image": scene.image, "id": self.ids[index]}
        targets = {
            "semseg": scene.semseg,
            "human_parts": scene.parts,
            "sal": scene.sal,
            "edge": scene.edge.astype(np.float32),
            "depth": scene.depth,
            "normals": scene.normals,
        }
        raw.update({task: targets[task] for task in self.tasks})
        if "edge" in self.tasks:  # the boundary metric's ground truth, as SEISM builds it from the labels
            raw["edge_seism"] = seg2bmap(scene.instance).astype(np.uint8)
        return raw
