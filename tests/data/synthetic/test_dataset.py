"""SyntheticScenes as a Dataset, and the miniature trees' file formats."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tiger.data.synthetic import SyntheticScenes, generate_scene, write_nyud_tree
from tiger.data.synthetic.trees import encode_normals_png, soft_saliency
from tiger.data.transforms import EvalTransform, TrainTransform
from tiger.tasks import TASK_NAMES


def test_dataset_is_deterministic_and_consistent():
    dataset = SyntheticScenes(5, size=(32, 40), tasks=TASK_NAMES, seed=11)
    assert len(dataset) == 5 and dataset.num_semseg_classes == 8 and dataset.tasks == TASK_NAMES
    again = SyntheticScenes(5, size=(32, 40), seed=11)
    for index in range(5):
        a, b = dataset[index], again[index]
        for key in TASK_NAMES + ("image",):
            assert torch.equal(a[key], b[key]), key
    sample = dataset[2]
    scene = generate_scene(11, 2, (32, 40))
    np.testing.assert_array_equal(sample["semseg"].numpy(), scene.semseg)
    np.testing.assert_allclose(sample["depth"][0].numpy(), scene.depth)
    np.testing.assert_allclose(sample["normals"].permute(1, 2, 0).numpy(), scene.normals)
    np.testing.assert_array_equal(sample["edge"].numpy(), scene.edge)
    assert sample["meta"] == {"id": "scene_11_0000002", "valid_box": sample["meta"]["valid_box"]}
    assert sample["meta"]["valid_box"].tolist() == [0, 0, 32, 40]
    assert sample["image"].dtype == torch.float32 and sample["edge"].dtype == torch.float32


def test_boundary_metric_ground_truth_is_seg2bmap_of_the_instances(seg2bmap_by_definition):
    sample = SyntheticScenes(2, size=(32, 40), tasks=["edge"], seed=11)[1]
    expected = seg2bmap_by_definition(generate_scene(11, 1, (32, 40)).instance)
    np.testing.assert_array_equal(sample["edge_seism"].numpy(), expected)
    assert sample["edge_seism"].dtype == torch.uint8 and expected.any()


def test_first_index_and_task_subsets():
    shifted = SyntheticScenes(2, size=(32, 40), tasks=["depth"], seed=1, first_index=3)
    raw = shifted.load_raw(1)
    assert sorted(raw) == ["depth", "id", "image"]
    np.testing.assert_array_equal(raw["depth"], generate_scene(1, 4, (32, 40)).depth)
    with pytest.raises(ValueError, match="num_samples"):
        SyntheticScenes(0)
    with pytest.raises(ValueError, match="unknown tasks"):
        SyntheticScenes(2, tasks=["semantic"])
    with pytest.raises(IndexError):
        shifted.scene(2)


def test_transforms_apply_to_synthetic_scenes():
    dataset = SyntheticScenes(2, size=(32, 40), seed=0, transform=TrainTransform((32, 40), seed=0))
    sample = dataset[0]
    assert sample["image"].shape == (3, 32, 40) and sample["human_parts"].shape == (32, 40)
    padded = SyntheticScenes(1, size=(32, 40), transform=EvalTransform((36, 48)))[0]
    assert padded["meta"]["valid_box"].tolist() == [2, 4, 32, 40]


def test_normals_png_round_trip_and_invalid_marker():
    normals = generate_scene(0, 0, (16, 20)).normals
    normals[0, 0] = 0
    png = encode_normals_png(normals)
    assert (png[0, 0] == 0).all() and (png.reshape(-1, 3)[1:].max(1) > 0).all()
    decoded = png.astype(np.float32) * 2 / 255 - 1
    np.testing.assert_allclose(decoded[1:], normals[1:], atol=1 / 255 + 1e-6)


def test_soft_saliency_thresholds_back_to_the_mask():
    mask = np.zeros((30, 30), np.uint8)
    mask[8:22, 2:18] = 1
    soft = soft_saliency(mask)
    np.testing.assert_array_equal(soft / 255 > 0.5, mask.astype(bool))
    assert soft.min() == 0 and soft.max() == 255
    assert (soft_saliency(np.zeros((3, 3))) == 0).all()


def test_nyud_tree_layout(tmp_path):
    tree = write_nyud_tree(tmp_path / "NYUDv2", 2, 1, (24, 32), seed=1, packaging="invpt")
    assert (tmp_path / "NYUDv2" / "gt_sets" / "val.txt").read_text() == "0003\n"
    names = sorted(p.relative_to(tree.root).as_posix() for p in tree.root.rglob("*") if p.is_file())
    assert names == sorted(
        ["gt_sets/train.txt", "gt_sets/val.txt"]
        + [f"{folder}/{i}.{ext}" for i in ("0001", "0002", "0003")
           for folder, ext in (("images", "png"), ("segmentation", "png"), ("depth", "npy"),
                               ("normals", "png"), ("edge", "png"))]
    )  # fmt: skip
    edge = np.asarray(Image.open(tree.root / "edge" / "0001.png"))
    assert set(np.unique(edge).tolist()) == {0, 255}
    with pytest.raises(ValueError, match="packaging"):
        write_nyud_tree(tmp_path / "x", 1, 1, packaging="mti")
