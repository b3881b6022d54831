"""Data: NYUD-v2 and PASCAL-Context readers, transforms, resumable sampling and the LightningDataModule.

The synthetic scenes of the embedded default and the miniature data-set trees are apart, in
:mod:`tiger.data.synthetic`."""

from tiger.data.common import CorruptFileError, DatasetLayoutError, LabelShapeError, MultiTaskDataset
from tiger.data.datamodule import DATASETS, MultiTaskDataModule, build_dataset, resolve_root
from tiger.data.nyud import NYUDv2
from tiger.data.pascal import PascalContext
from tiger.data.transforms import EvalTransform, TrainTransform, to_sample

__all__ = [
    "DATASETS",
    "CorruptFileError",
    "DatasetLayoutError",
    "EvalTransform",
    "LabelShapeError",
    "MultiTaskDataModule",
    "MultiTaskDataset",
    "NYUDv2",
    "PascalContext",
    "TrainTransform",
    "build_dataset",
    "resolve_root",
    "to_sample",
]
