"""Resumable training order: a loader restored from its state continues the stream exactly."""

from __future__ import annotations

import pytest
import torch

from tiger.data import TrainTransform
from tiger.data.sampling import DrawKey, KeyedDraws, ResumableDataLoader, ResumableSampler
from tiger.data.synthetic import SyntheticScenes


def loader(seed: int = 3, num_workers: int = 0, batch_size: int = 2) -> ResumableDataLoader:
    scenes = SyntheticScenes(
        5, (24, 32), tasks=["semseg", "depth"], seed=0, transform=TrainTransform((24, 32))
    )
    sampler = ResumableSampler(scenes, seed)
    return ResumableDataLoader(
        KeyedDraws(scenes), batch_size=batch_size, sampler=sampler, drop_last=True, num_workers=num_workers
    )


def stream(source: ResumableDataLoader, epochs: range) -> list[tuple[list[str], torch.Tensor]]:
    """(ids, images) of every batch of ``epochs``, setting the epoch as Lightning does."""
    batches = []
    for epoch in epochs:
        source.sampler.set_epoch(epoch)
        batches += [(batch["meta"]["id"], batch["image"]) for batch in source]
    return batches


def test_sampler_order_is_a_function_of_seed_and_epoch_and_resumes_part_way():
    sampler = ResumableSampler(range(7), seed=5)
    first = list(sampler)
    assert sorted(key.index for key in first) == list(range(7))
    assert {(key.seed, key.epoch) for key in first} == {(5, 0)}
    assert list(ResumableSampler(range(7), seed=5)) == first
    sampler.set_epoch(1)
    second = list(sampler)
    assert [k.index for k in second] != [k.index for k in first] and second[0].epoch == 1
    sampler.resume(1, 3)
    assert list(sampler) == second[3:]
    assert list(sampler) == second  # the skip applies to one iteration only
    # two replicas split the same permutation
    halves = [list(ResumableSampler(range(6), seed=5, num_replicas=2, rank=r)) for r in (0, 1)]
    assert sorted(k.index for half in halves for k in half) == list(range(6))


def test_draw_keys_seed_distinct_reproducible_augmentations():
    assert DrawKey(1, 7, 0).generator().random() == DrawKey(1, 7, 0).generator().random()
    values = {DrawKey(i, s, e).generator().random() for i in (0, 1) for s in (7, 8) for e in (0, 1)}
    assert len(values) == 8
    scenes = SyntheticScenes(2, (24, 32), tasks=["depth"], seed=0, transform=TrainTransform((24, 32)))
    draws = KeyedDraws(scenes)
    assert torch.equal(draws[DrawKey(1, 7, 0)]["image"], draws[DrawKey(1, 7, 0)]["image"])
    assert not torch.equal(draws[DrawKey(1, 7, 0)]["image"], draws[DrawKey(1, 7, 1)]["image"])
    with pytest.raises(ValueError, match="SyntheticScenes has no transform"):
        KeyedDraws(SyntheticScenes(2, (24, 32), tasks=["depth"]))


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("consumed", [1, 2])  # mid-epoch, and at the end of epoch 0 (2 batches an epoch)
def test_a_restored_loader_continues_the_stream_exactly(num_workers, consumed):
    reference = stream(loader(num_workers=num_workers), range(3))
    interrupted = loader(num_workers=num_workers)
    interrupted.sampler.set_epoch(0)
    for index, _ in enumerate(interrupted):
        if index + 1 == consumed:
            break
    state = interrupted.state_dict()
    assert state == {
        "seed": 3,
        "epoch": 0,
        "batches": consumed,
        "batch_size": 2,
        "num_samples": 5,
        "num_replicas": 1,
    }
    restored = loader(seed=99, num_workers=num_workers)  # the checkpoint's seed wins, with a warning
    with pytest.warns(UserWarning, match="seeded 3 with seed 99"):
        restored.load_state_dict(state)
    epoch = restored.sampler.epoch
    assert epoch == (1 if consumed == 2 else 0)
    continued = [(b["meta"]["id"], b["image"]) for b in restored]  # the rest of the epoch, as Lightning does
    continued += stream(restored, range(epoch + 1, 3))
    assert len(continued) == len(reference) - consumed
    for (ids, images), (ids_ref, images_ref) in zip(continued, reference[consumed:], strict=True):
        assert ids == ids_ref and torch.equal(images, images_ref)
    assert restored.state_dict()["batches"] == 2


def test_a_loader_of_another_shape_restarts_the_epoch_with_a_warning():
    state = {**loader().state_dict(), "epoch": 2, "batches": 1, "batch_size": 4}
    restored = loader()
    with pytest.warns(UserWarning, match="'batch_size': 4.*epoch 2 starts again from its beginning"):
        restored.load_state_dict(state)
    assert restored.sampler.epoch == 2 and len(list(restored)) == 2
    with pytest.raises(TypeError, match="needs a ResumableSampler"):
        ResumableDataLoader(KeyedDraws(loader().dataset.dataset), batch_size=2)
