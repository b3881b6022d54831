"""Data: NYUD-v2 and PASCAL-Context readers, synthetic scenes, transforms and the LightningDataModule."""

from tiger.data.common import CorruptFileError, DatasetLayoutError, LabelShapeError, MultiTaskDataset
from tiger.data.datamodule import DATASETS, MultiTaskDataModule, build_dataset, resolve_root
from tiger.data.nyud import NYUDv2
from tiger.data.pascal import PascalContext
from tiger.data.scenes import SCENE_CLASSES, Scene, generate_scene
from tiger.data.synthetic import MiniatureTree, SyntheticScenes, write_nyud_tree, write_pascal_tree
from tiger.data.transforms import EvalTransform, TrainTransform, to_sample

__all__ = [
    "DATASETS",
    "SCENE_CLASSES",
    "CorruptFileError",
    "DatasetLayoutError",
    "EvalTransform",
    "LabelShapeError",
    "MiniatureTree",
    "MultiTaskDataModule",
    "MultiTaskDataset",
    "NYUDv2",
    "PascalContext",
    "Scene",
    "SyntheticScenes",
    "TrainTransform",
    "build_dataset",
    "generate_scene",
    "resolve_root",
    "to_sample",
    "write_nyud_tree",
    "write_pascal_tree",
]
