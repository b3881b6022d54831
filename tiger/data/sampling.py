"""Resumable training order: every draw is a pure function of (seed, epoch, position), saved in checkpoints.

A killed run resumed from a checkpoint continues with exactly the samples and augmentations the
uninterrupted run would have drawn, with any number of DataLoader workers:

- :class:`ResumableSampler` is a ``DistributedSampler`` (one replica by default): the order of epoch
  ``e`` is the permutation of ``seed + e``, as in DDP, and each index comes with the key of its
  augmentation, :class:`DrawKey` ``(index, seed, epoch)``; it can start an epoch part-way through.
- :class:`KeyedDraws` gives the sample of a key: the dataset's raw sample through its transform with a
  generator seeded from the key, so no generator state lives in (or is lost with) a worker process.
- :class:`ResumableDataLoader` counts the batches it has handed out in the current epoch and implements
  ``state_dict`` / ``load_state_dict``; Lightning's fit loop saves that state in every checkpoint
  (``loops.fit_loop.combined_loader``) and loads it before the first batch of a resumed run.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from tiger.data.common import MultiTaskDataset


class DrawKey(NamedTuple):
    """One draw of the training stream: dataset index, the run's seed and the epoch."""

    index: int
    seed: int
    epoch: int

    def generator(self) -> np.random.Generator:
        """The augmentation generator of this draw (independent streams for distinct keys)."""
        return np.random.default_rng([self.seed, self.epoch, self.index])


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` that yields :class:`DrawKey` and can resume an epoch part-way.

    Args:
        dataset: anything with ``len``.
        seed: the run's seed (the same on every rank).
        num_replicas, rank: the DDP world size and this rank (1 and 0 in a single process).
        shuffle: a new permutation per epoch (else the dataset order).
    """

    def __init__(
        self, dataset: Any, seed: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=int(seed))
        self._resume: tuple[int, int] | None = None  # (epoch, samples of this rank to skip)

    def resume(self, epoch: int, skip: int) -> None:
        """Start at ``epoch``; its next iteration leaves out the first ``skip`` samples of this rank."""
        self.set_epoch(epoch)
        self._resume = (int(epoch), int(skip))

    def __iter__(self) -> Iterator[DrawKey]:
        epoch = self.epoch
        indices = list(super().__iter__())
        if self._resume is not None and self._resume[0] == epoch:
            indices = indices[self._resume[1] :]
            self._resume = None
        return iter([DrawKey(int(index), self.seed, epoch) for index in indices])


class KeyedDraws(Dataset):
    """``dataset[key]`` for a :class:`DrawKey`: the raw sample through the dataset's transform.

    The transform (a :class:`tiger.data.transforms.TrainTransform`) gets ``rng=key.generator()``.
    """

    def __init__(self, dataset: MultiTaskDataset) -> None:
        if dataset.transform is None:
            raise ValueError(f"{type(dataset).__name__} has no transform to draw augmentations for")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: DrawKey) -> dict[str, Any]:
        return self.dataset.transform(self.dataset.load_raw(key.index), rng=key.generator())


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` over a :class:`ResumableSampler` whose position can be saved and restored.

    ``state_dict()`` = ``{"seed", "epoch", "batches", "batch_size", "num_samples", "num_replicas"}``:
    ``batches`` handed out in ``epoch`` (Lightning does not prefetch from a loader with a length, so
    they are the batches trained on). ``load_state_dict`` makes the next iteration continue there.
    """

    def __init__(self, dataset: Dataset, *args: Any, **kwargs: Any) -> None:
        super().__init__(dataset, *args, **kwargs)
        if not isinstance(self.sampler, ResumableSampler):
            raise TypeError(
                f"ResumableDataLoader needs a ResumableSampler, got {type(self.sampler).__name__}"
            )
        self._epoch = self.sampler.epoch
        self._batches = 0
        self._skipped = 0  # batches left out at the start of the next iteration (set by load_state_dict)

    def __iter__(self) -> Iterator[Any]:
        self._epoch, self._batches, self._skipped = self.sampler.epoch, self._skipped, 0
        for batch in super().__iter__():
            self._batches += 1
            yield batch

    def _identity(self) -> dict[str, int]:
        return {
            "batch_size": int(self.batch_size or 1),
            "num_samples": len(self.dataset),
            "num_replicas": self.sampler.num_replicas,
        }

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.sampler.seed, "epoch": self._epoch, "batches": self._batches, **self._identity()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = {key: state.get(key) for key in self._identity()}
        if saved != self._identity():
            warnings.warn(
                f"the checkpoint's training data order was made for {saved}, this run has "
                f"{self._identity()}: epoch {state.get('epoch')} starts again from its beginning",
                stacklevel=2,
            )
            self.sampler.resume(int(state["epoch"]), 0)
            return
        if int(state["seed"]) != self.sampler.seed:
            warnings.warn(
                f"resuming a run seeded {state['seed']} with seed {self.sampler.seed}: the data order and "
                f"augmentations continue with the checkpoint's seed {state['seed']}",
                stacklevel=2,
            )
            self.sampler.seed = int(state["seed"])
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if batches >= len(self):
            epoch, batches = epoch + 1, 0
        self._skipped = batches
        self.sampler.resume(epoch, batches * int(self.batch_size or 1))
