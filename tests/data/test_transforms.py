"""The training / test-time transforms of PROTOCOL.md section 2."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from tiger.data.transforms import (
    IMAGE_PAD_COLOUR,
    EvalTransform,
    TrainTransform,
    center_pad,
    horizontal_flip,
    max_class_ratio,
    photometric_distortion,
    random_crop,
    rescale,
    to_sample,
)


def raw_sample(height: int = 20, width: int = 30, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    normals = rng.normal(size=(height, width, 3)).astype(np.float32)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    normals[0, 0] = 0.0  # one invalid normal
    depth = rng.uniform(1.0, 5.0, (height, width)).astype(np.float32)
    depth[1, 1] = 0.0
    return {
        "id": "x",
        "image": rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
        "semseg": rng.integers(0, 5, (height, width), dtype=np.uint8),
        "human_parts": rng.integers(0, 7, (height, width), dtype=np.uint8),
        "sal": rng.integers(0, 2, (height, width), dtype=np.uint8),
        "edge": rng.integers(0, 2, (height, width)).astype(np.float32),
        "depth": depth,
        "normals": normals,
    }


def test_rescale_divides_depth_and_keeps_labels_nearest():
    raw = raw_sample()
    for scale in (2.0, 0.5, 1.37):
        out = rescale(raw, scale)
        hw = (int(20 * scale), int(30 * scale))
        assert all(out[k].shape[:2] == hw for k in ("image", "semseg", "depth", "normals", "edge"))
        # nearest: every scaled depth is an original value divided by the scale
        distance = np.abs((out["depth"].ravel() * scale)[:, None] - np.unique(raw["depth"])[None]).min(1)
        assert distance.max() < 1e-5
        assert set(np.unique(out["semseg"]).tolist()) <= set(np.unique(raw["semseg"]).tolist())
        assert out["edge"].dtype == np.float32 and set(np.unique(out["edge"]).tolist()) <= {0.0, 1.0}
    doubled = rescale(raw, 2.0)
    np.testing.assert_allclose(doubled["depth"][::2, ::2], raw["depth"] / 2.0)
    np.testing.assert_array_equal(doubled["semseg"][::2, ::2], raw["semseg"])


def test_flip_negates_normals_x_only():
    raw = raw_sample()
    out = horizontal_flip(raw)
    np.testing.assert_array_equal(out["normals"][:, ::-1, 0], -raw["normals"][..., 0])
    np.testing.assert_array_equal(out["normals"][:, ::-1, 1:], raw["normals"][..., 1:])
    for key in ("image", "semseg", "depth", "edge", "sal", "human_parts"):
        np.testing.assert_array_equal(out[key][:, ::-1], raw[key])
    assert raw["normals"][0, 0].sum() == 0 and out["normals"][0, -1].sum() == 0  # invalid stays all-zero


def test_center_pad_values_and_valid_box():
    raw = raw_sample(5, 7)
    out, box = center_pad(raw, (10, 12))
    assert box == [2, 2, 5, 7]
    inside = (slice(2, 7), slice(2, 9))
    for key in raw:
        if key == "id":
            continue
        np.testing.assert_array_equal(out[key][inside], raw[key])
        outside = np.ones((10, 12), dtype=bool)
        outside[inside] = False
        if key == "image":  # the uint8 image: the ImageNet mean colour, round(255 * mean)
            np.testing.assert_array_equal(
                out[key][outside], np.broadcast_to([124, 116, 104], (outside.sum(), 3))
            )
            continue
        expected = 0 if key in ("depth", "normals") else 255
        assert (out[key][outside] == expected).all(), key
    same, box = center_pad(raw, (5, 7))
    assert box == [0, 0, 5, 7] and same["image"] is raw["image"]


def test_cat_max_ratio_crop():
    semseg = np.zeros((100, 100), dtype=np.uint8)
    semseg[:, 80:] = 1  # class 1 only in the right fifth
    semseg[:10] = 255  # ignored rows do not count
    raw = {"id": "c", "image": np.zeros((100, 100, 3), np.uint8), "semseg": semseg}
    plain = [
        max_class_ratio(random_crop(raw, (40, 40), np.random.default_rng(s), 1.0)["semseg"])
        for s in range(50)
    ]
    assert sum(r >= 0.75 for r in plain) > 25  # without the rule most crops are one class
    ratios = [
        max_class_ratio(random_crop(raw, (40, 40), np.random.default_rng(s), 0.75)["semseg"])
        for s in range(50)
    ]
    assert sum(r < 0.75 for r in ratios) >= 45  # 10 attempts almost always find a mixed crop
    assert max_class_ratio(np.array([[0, 0, 0, 1, 255, 255]], np.uint8)) == 0.75
    assert max_class_ratio(np.full((3, 3), 4, np.uint8)) == 1.0
    small = random_crop(raw_sample(10, 12), (20, 20), np.random.default_rng(0))
    assert small["image"].shape[:2] == (10, 12)  # smaller than the crop: kept whole, padded later


def test_photometric_distortion_matches_mmseg_steps():
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    outs = [photometric_distortion(image, np.random.default_rng(s)) for s in range(40)]
    assert all(o.dtype == np.uint8 and o.shape == image.shape for o in outs)
    assert any(np.array_equal(o, image) for o in outs)  # all four steps skipped (p = 1/16)
    assert sum(not np.array_equal(o, image) for o in outs) > 25
    np.testing.assert_array_equal(outs[3], photometric_distortion(image, np.random.default_rng(3)))

    class Draws:  # brightness only: random() < 0.5 once, then skip everything
        def __init__(self):
            self.calls = iter([0.1, 0.9, 0.9, 0.9, 0.9])

        def random(self):
            return next(self.calls)

        def uniform(self, low, high):
            return 10.0

    gray = np.full((2, 2, 3), 250, np.uint8)
    np.testing.assert_array_equal(photometric_distortion(gray, Draws()), 255)  # +10, clipped


def test_train_transform_end_to_end_and_seeding():
    raw = raw_sample(30, 40)
    transform = TrainTransform((24, 32), seed=0)
    sample = transform(raw, rng=np.random.default_rng(1))
    assert sample["image"].shape == (3, 24, 32) and sample["image"].dtype == torch.float32
    assert sample["image"].min() >= 0.0 and sample["image"].max() <= 1.0
    assert sample["semseg"].dtype == torch.int64 and sample["semseg"].shape == (24, 32)
    assert sample["depth"].shape == (1, 24, 32) and sample["normals"].shape == (3, 24, 32)
    top, left, height, width = sample["meta"]["valid_box"].tolist()
    assert (sample["semseg"][top : top + height, left : left + width] != 255).all()
    outside = torch.ones(24, 32, dtype=torch.bool)
    outside[top : top + height, left : left + width] = False
    assert (sample["semseg"][outside] == 255).all() and (sample["depth"][0][outside] == 0).all()
    a = TrainTransform((24, 32), seed=5)
    b = TrainTransform((24, 32), seed=5)
    first = [a(raw)["image"] for _ in range(3)]
    second = [b(raw)["image"] for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(first, second, strict=True))
    assert not torch.equal(first[0], first[1])  # the generator advances


def test_eval_transform_pads_only_and_rejects_larger_images():
    raw = raw_sample(20, 30)
    sample = EvalTransform((24, 32))(raw)
    assert sample["meta"]["valid_box"].tolist() == [2, 1, 20, 30]
    np.testing.assert_allclose(
        sample["image"][:, 2:22, 1:31].numpy(), raw["image"].transpose(2, 0, 1) / 255.0, atol=1e-7
    )
    np.testing.assert_allclose(sample["depth"][0, 2:22, 1:31].numpy(), raw["depth"])
    with pytest.raises(ValueError, match=r"'x' is 20x30, larger than the evaluation size 16x32"):
        EvalTransform((16, 32))(raw)


def test_images_are_padded_with_the_imagenet_mean_so_experts_see_zero():
    """InvPT / ATRC pad the normalised image with 0: the mean colour, not black (PROTOCOL.md section 2)."""
    assert tuple(IMAGE_PAD_COLOUR) == tuple(IMAGENET_DEFAULT_MEAN)
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1)
    raw = raw_sample(20, 30)
    test = EvalTransform((24, 32))(raw)  # test time: centre padding of 20x30 to 24x32
    outside = torch.ones(24, 32, dtype=torch.bool)
    outside[2:22, 1:31] = False
    padded = test["image"][:, outside]
    assert padded.shape == (3, 24 * 32 - 20 * 30)
    torch.testing.assert_close(padded, mean.expand_as(padded), atol=1e-7, rtol=0)
    assert ((padded - mean) / std).abs().max() < 1e-6  # the normalised zero of the ImageNet experts
    # after a small training crop (a 12x16 image is smaller than the 24x32 train size at any scale <= 2)
    small = raw_sample(10, 14)
    train = TrainTransform((24, 32), scale_range=(1.0, 1.0), photometric=False)(
        small, np.random.default_rng(0)
    )
    top, left, height, width = train["meta"]["valid_box"].tolist()
    assert (height, width) == (10, 14)
    outside = torch.ones(24, 32, dtype=torch.bool)
    outside[top : top + height, left : left + width] = False
    padded = train["image"][:, outside]
    torch.testing.assert_close(padded, mean.expand_as(padded), atol=1e-7, rtol=0)
    assert (train["semseg"][outside] == 255).all() and (train["depth"][0][outside] == 0).all()


def test_metric_only_ground_truth_is_padded_at_test_time_and_dropped_in_training():
    raw = raw_sample(20, 30)
    raw["edge_seism"] = np.random.default_rng(3).integers(0, 2, (20, 30)).astype(np.uint8)
    test = EvalTransform((24, 32))(raw)
    assert test["edge_seism"].dtype == torch.uint8
    np.testing.assert_array_equal(test["edge_seism"][2:22, 1:31].numpy(), raw["edge_seism"])
    assert int((test["edge_seism"] == 255).sum()) == 24 * 32 - 20 * 30
    assert "edge_seism" not in TrainTransform((24, 32))(raw, np.random.default_rng(0))


def test_to_sample_ignores_parts_maps_without_parts():
    raw = raw_sample(4, 5)
    raw["human_parts"] = np.zeros((4, 5), np.uint8)
    assert (to_sample(raw)["human_parts"] == 255).all()
    raw["human_parts"][0, :2] = 255
    assert (to_sample(raw)["human_parts"] == 255).all()
    assert (to_sample(raw, ignore_empty_parts=False)["human_parts"][1] == 0).all()
    raw["human_parts"][3, 3] = 2
    kept = to_sample(raw)["human_parts"]
    assert kept[3, 3] == 2 and kept[1, 1] == 0
