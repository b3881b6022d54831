"""The factored scenes: each channel carries one cue of its own scene, and the scenes are independent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tiger.study.scenes import CLASS_LEVEL, FOG_DEPTH, FactoredDataModule, FactoredScenes


@pytest.fixture(scope="module")
def scenes() -> FactoredScenes:
    return FactoredScenes(4, (48, 64), seed=3)


def test_each_channel_encodes_one_scenes_cue(scenes: FactoredScenes) -> None:
    raw = scenes.load_raw(1)
    semantics, geometry, outlines = scenes.scenes(1)
    image = raw["image"].astype(np.int32)
    assert np.array_equal(image[..., 0], (semantics.semseg.astype(np.int32) + 1) * CLASS_LEVEL)
    assert np.abs(image[..., 1] - 255 * np.exp(-geometry.depth / FOG_DEPTH)).max() <= 0.5
    assert np.array_equal(image[..., 2], 255 * outlines.edge.astype(np.int32))
    assert np.array_equal(raw["semseg"], semantics.semseg) and np.array_equal(raw["depth"], geometry.depth)
    assert np.array_equal(raw["normals"], geometry.normals) and np.array_equal(raw["edge"], outlines.edge)
    assert raw["edge_seism"].dtype == np.uint8 and raw["edge_seism"].any()


def test_scenes_are_rolled_so_that_no_task_has_a_positional_prior() -> None:
    from tiger.data.synthetic.scenes import generate_scene
    from tiger.study.scenes import rolled

    scene = generate_scene(0, 0, (48, 64))
    moved = rolled(scene, (5, 7))
    assert np.array_equal(moved.semseg, np.roll(scene.semseg, (5, 7), axis=(0, 1)))
    assert np.array_equal(moved.normals, np.roll(scene.normals, (5, 7), axis=(0, 1)))
    assert moved.edge[:, 6].any() or moved.edge[4, :].any()  # the seams are boundaries where labels change
    # over many samples the floor (class 0) is as likely at the top as at the bottom of the image
    data = FactoredScenes(48, (48, 64), ("semseg",), seed=2)
    floor = np.mean([data.load_raw(i)["semseg"] == 0 for i in range(48)], axis=0)
    top, bottom = floor[:16].mean(), floor[-16:].mean()
    unrolled = np.mean([generate_scene(2, i, (48, 64)).semseg == 0 for i in range(48)], axis=0)
    assert unrolled[-16:].mean() > 3 * unrolled[:16].mean()  # a room's floor is at the bottom ...
    assert abs(top - bottom) < 0.5 * max(top, bottom)  # ... rolled, it is anywhere


def test_the_three_scenes_of_a_sample_are_independent_draws(scenes: FactoredScenes) -> None:
    semantics, geometry, outlines = scenes.scenes(0)
    assert not np.array_equal(semantics.semseg, geometry.semseg)
    assert not np.array_equal(geometry.edge, outlines.edge)
    # across samples, the class-identity channel says nothing about the depth target
    data = FactoredScenes(24, (48, 64), ("semseg", "depth"), seed=5)
    samples = [data.load_raw(index) for index in range(24)]
    grey = [sample["image"][..., 0].mean() for sample in samples]
    depth = [sample["depth"].mean() for sample in samples]
    assert abs(np.corrcoef(grey, depth)[0, 1]) < 0.5  # independent scenes: no strong link (24 samples)


def test_training_draws_only_flip(tmp_path) -> None:
    module = FactoredDataModule(
        "synthetic", None, ["semseg", "depth", "normals", "edge"], (48, 64), batch_size=2, num_workers=0,
        synthetic={"num_train": 4, "num_val": 2, "size": [48, 64]}, seed=0,
    )  # fmt: skip
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    raw = [module.datasets["train"].load_raw(i) for i in range(4)]
    for image in batch["image"]:  # each training image is one of the raw images, as is or mirrored
        pixels = torch.from_numpy(np.stack([r["image"] for r in raw])).permute(0, 3, 1, 2).float() / 255
        assert any(torch.allclose(image, p) or torch.allclose(image, p.flip(-1)) for p in pixels)
    assert len(module.datasets["val"]) == 2 and module.num_semseg_classes == 8
