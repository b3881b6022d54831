"""The LightningDataModule of every dataset, and :func:`build_dataset`.

The data root of a real dataset is the ``root`` argument, else ``$TIGER_DATA/NYUD_MT`` (or
``$TIGER_DATA/NYUDv2`` when only that exists) for NYUD and ``$TIGER_DATA/PASCAL_MT`` for PASCAL
(the variable's name is ``root_env``). Every check runs when the datasets are built (``setup``), so a
run with a missing root, split file, folder or file stops at once with the expected layout.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from tiger import options
from tiger.data.common import DOWNLOAD_HINT, DatasetLayoutError, MultiTaskDataset, RawSample
from tiger.data.nyud import NYUD_LAYOUT, NYUDv2
from tiger.data.pascal import PASCAL_LAYOUT, PascalContext
from tiger.data.sampling import KeyedDraws, ResumableDataLoader, ResumableSampler
from tiger.data.synthetic import SYNTHETIC_SPLIT_OFFSETS, SyntheticScenes
from tiger.data.transforms import EvalTransform, TrainTransform

DATASETS: dict[str, type[MultiTaskDataset]] = {
    "nyud": NYUDv2,
    "pascal": PascalContext,
    "synthetic": SyntheticScenes,
}
_FOLDER_NAMES = {"nyud": ("NYUD_MT", "NYUDv2"), "pascal": ("PASCAL_MT",)}
_LAYOUTS = {"nyud": NYUD_LAYOUT, "pascal": PASCAL_LAYOUT}


def _dataset_class(name: str) -> type[MultiTaskDataset]:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return DATASETS[name]


def build_dataset(
    name: str,
    root: str | os.PathLike | None,
    split: str,
    tasks: Sequence[str],
    transform: Callable[[RawSample], dict[str, Any]] | None = None,
    **synthetic: Any,
) -> MultiTaskDataset:
    """A dataset by name: "nyud" (:class:`NYUDv2`), "pascal" (:class:`PascalContext`) or "synthetic".

    A real dataset's ``root`` None means ``$TIGER_DATA/<NYUD_MT|NYUDv2|PASCAL_MT>`` (:func:`resolve_root`).
    For "synthetic", ``root`` is unused and ``synthetic`` may hold ``num_samples``, ``size`` and ``seed``
    (default: 64 scenes of 64x80, seed 0, as the embedded demo's validation set); the split picks a
    disjoint range of scenes (:data:`SYNTHETIC_SPLIT_OFFSETS`).
    """
    cls = _dataset_class(name)
    if cls is SyntheticScenes:
        if split not in SYNTHETIC_SPLIT_OFFSETS:
            raise ValueError(
                f"unknown synthetic split {split!r}; known: {', '.join(SYNTHETIC_SPLIT_OFFSETS)}"
            )
        options = {"num_samples": 64, "size": (64, 80), "seed": 0, **synthetic}
        first = SYNTHETIC_SPLIT_OFFSETS[split]
        return SyntheticScenes(tasks=tasks, transform=transform, first_index=first, **options)
    if synthetic:
        raise TypeError(f"options {sorted(synthetic)} only apply to the synthetic dataset")
    return cls(resolve_root(name, root), split, tasks, transform)


def resolve_root(name: str, root: str | os.PathLike | None, env: str = "TIGER_DATA") -> Path:
    """The dataset folder: ``root``, else ``$env/<NYUD_MT|NYUDv2|PASCAL_MT>``; a clear error if neither.

    A NYUD ``root`` that does not exist while its sibling of the other packaging does (``.../NYUD_MT``
    vs ``.../NYUDv2``) resolves to the sibling.
    """
    if root is not None:
        root = Path(root).expanduser()
        siblings = [root.parent / folder for folder in _FOLDER_NAMES.get(name, ()) if folder != root.name]
        if not root.exists() and root.name in _FOLDER_NAMES.get(name, ()):
            return next((s for s in siblings if s.is_dir()), root)
        return root
    base = os.environ.get(env)
    folders = _FOLDER_NAMES[name]
    if not base:
        raise DatasetLayoutError(
            f"no data root for {name!r}: pass root=... or set ${env} to the folder that holds "
            f"{' or '.join(folders)}; expected layout:\n{_LAYOUTS[name]}\n{DOWNLOAD_HINT}"
        )
    candidates = [Path(base).expanduser() / folder for folder in folders]
    return next((c for c in candidates if c.is_dir()), candidates[0])


class MultiTaskDataModule(L.LightningDataModule):
    """Train and validation dataloaders of NYUD-v2, PASCAL-Context or the synthetic scenes.

    Args:
        dataset: "nyud", "pascal" or "synthetic".
        root: the dataset folder (None: from ``$root_env``, see the module docstring).
        tasks: the tasks to load.
        train_size: the training crop / pad size (H, W).
        eval_size: the test-time pad size (None: ``train_size``).
        batch_size, eval_batch_size: per step (eval default: ``batch_size``).
        num_workers, pin_memory: DataLoader settings.
        synthetic: for "synthetic": {num_train, num_val, seed, size, cache (keep rendered scenes in memory)}.
        root_env: the environment variable that holds the folder of the datasets.
        train_split, val_split, test_split: split names (the test split of both benchmarks is "val").
        seed: seeds the training order and augmentation (None: ``torch.initial_seed()``, which
            ``lightning.seed_everything`` sets on every rank). The training loader is resumable
            (:mod:`tiger.data.sampling`): each draw is a function of (seed, epoch, position) and the
            position is saved in every checkpoint, so a resumed run continues the interrupted one exactly.
    """

    def __init__(
        self,
        dataset: str,
        root: str | None,
        tasks: list[str],
        train_size: tuple[int, int],
        eval_size: tuple[int, int] | None = None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        pin_memory: bool = True,
        synthetic: dict | None = None,
        root_env: str = "TIGER_DATA",
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "val",
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.dataset_class = _dataset_class(dataset)
        self.dataset_name = dataset
        self.tasks = tuple(tasks)
        self.train_size = options.size(train_size, "train_size")  # never truncated: 4.5 is an error
        self.eval_size = options.size(eval_size, "eval_size") if eval_size is not None else self.train_size
        self.batch_size = options.integer(batch_size, "batch_size", minimum=1)
        self.eval_batch_size = options.integer(
            batch_size if eval_batch_size is None else eval_batch_size, "eval_batch_size", minimum=1
        )
        self.num_workers = options.integer(num_workers, "num_workers", minimum=0)
        self.pin_memory = bool(pin_memory)
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.seed = seed
        if dataset == "synthetic":
            settings = dict(synthetic or {})
            expected = {"num_train", "num_val", "seed", "size", "cache"}
            if set(settings) - expected or not {"num_train", "num_val"} <= set(settings):
                raise ValueError(
                    "synthetic needs keys num_train, num_val (and optionally seed, size, cache), "
                    f"got {settings}"
                )
            for key in ("num_train", "num_val"):
                options.integer(settings[key], f"synthetic.{key}", minimum=1)
            options.integer(settings.get("seed", 0), "synthetic.seed")
            if "size" in settings:
                settings["size"] = options.size(settings["size"], "synthetic.size")
            self.synthetic = {"seed": 0, "size": self.train_size, **settings}
            self.root = None
        else:
            if synthetic:
                raise ValueError(
                    f"the 'synthetic' options only apply to dataset='synthetic', not {dataset!r}"
                )
            self.root = resolve_root(dataset, root, root_env)
        self.datasets: dict[str, MultiTaskDataset] = {}

    @property
    def num_semseg_classes(self) -> int:
        return self.dataset_class.num_semseg_classes

    @property
    def task_names(self) -> tuple[str, ...]:
        return self.tasks

    def _build(self, stage: str) -> MultiTaskDataset:
        if stage not in self.datasets:
            if stage == "train":
                transform: Callable = TrainTransform(self.train_size, seed=self.seed)
            else:
                transform = EvalTransform(self.eval_size)
            split = self.splits[stage]
            if self.root is None:
                num = self.synthetic["num_train" if stage == "train" else "num_val"]
                options = {"num_samples": num, "size": self.synthetic["size"], "seed": self.synthetic["seed"]}
                options["cache"] = bool(self.synthetic.get("cache", False))
                self.datasets[stage] = build_dataset(
                    "synthetic", None, stage, self.tasks, transform, **options
                )
            else:
                self.datasets[stage] = build_dataset(
                    self.dataset_name, self.root, split, self.tasks, transform
                )
        return self.datasets[stage]

    def setup(self, stage: str | None = None) -> None:
        """Build and check the datasets of ``stage`` (fit: train + val, validate: val, test: test)."""
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in needed.get(stage or "", ("train", "val", "test")):
            self._build(split)

    def _loader(self, stage: str) -> DataLoader:
        dataset = self._build(stage)
        options = {
            "batch_size": self.eval_batch_size,
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory and torch.cuda.is_available(),
            "persistent_workers": self.num_workers > 0,
        }
        if stage != "train":
            return DataLoader(dataset, shuffle=False, **options)
        trainer = self.trainer
        seed = self.seed if self.seed is not None else torch.initial_seed() % 2**63
        sampler = ResumableSampler(
            dataset,
            seed,
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
        )
        options["batch_size"] = self.batch_size
        drop_last = len(sampler) > self.batch_size
        return ResumableDataLoader(KeyedDraws(dataset), sampler=sampler, drop_last=drop_last, **options)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")
