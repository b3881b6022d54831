"""The NYUD-v2 reader on miniature NYUD_MT (ATRC) and NYUDv2 (InvPT) trees written by the generator."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from tiger.data import CorruptFileError, DatasetLayoutError, LabelShapeError, NYUDv2
from tiger.data.common import InvalidLabelWarning
from tiger.data.synthetic.trees import NYUD_CLASS_IDS, nyud_border
from tiger.data.transforms import EvalTransform, TrainTransform, rescale

TASKS = ["semseg", "depth", "normals", "edge"]


def inner_mask(shape) -> np.ndarray:
    border = nyud_border(shape)
    mask = np.zeros(shape, dtype=bool)
    mask[border:-border, border:-border] = True
    return mask


@pytest.mark.parametrize("packaging", ["atrc", "invpt"])
def test_decoded_values_equal_the_ground_truth(packaging, nyud_atrc, nyud_invpt):
    tree = nyud_atrc if packaging == "atrc" else nyud_invpt
    dataset = NYUDv2(tree.root, "train", TASKS)
    assert dataset.ids == tree.splits["train"] and dataset.num_semseg_classes == 40
    for index, image_id in enumerate(dataset.ids):
        raw, scene = dataset.load_raw(index), tree.scene(image_id)
        inner = inner_mask(scene.depth.shape)
        assert raw["id"] == image_id
        # semseg: file value v -> v - 1, 0 (the unlabelled border) -> 255
        np.testing.assert_array_equal(raw["semseg"][inner], NYUD_CLASS_IDS[scene.semseg][inner] - 1)
        assert (raw["semseg"][~inner] == 255).all()
        np.testing.assert_array_equal(raw["depth"][inner], scene.depth[inner])
        assert (raw["depth"][~inner] == 0).all()
        tolerance = 1.0 / 255 + 1e-6 if packaging == "invpt" else 0.0
        np.testing.assert_allclose(raw["normals"][inner], scene.normals[inner], atol=tolerance, rtol=0)
        # the border's all-zero normals: .npy keeps them (invalid); the png stores them as (0, 0, 0), which
        # InvPT decodes as every pixel, to the valid vector (-1, -1, -1)
        assert (raw["normals"][~inner] == (-1.0 if packaging == "invpt" else 0.0)).all()
        np.testing.assert_array_equal(raw["edge"], (scene.edge.astype(bool) & inner).astype(np.float32))
        assert raw["edge"].dtype == np.float32 and raw["edge"][inner].any()
        image_error = np.abs(raw["image"][inner].astype(int) - scene.image[inner].astype(int))
        assert (image_error.max() == 0) if packaging == "invpt" else (image_error.mean() < 4)


def test_sample_follows_the_task_contract(nyud_atrc):
    dataset = NYUDv2(nyud_atrc.root, "val", TASKS, transform=EvalTransform((56, 64)))
    sample = dataset[1]
    scene = nyud_atrc.scene(dataset.ids[1])
    assert sample["meta"]["id"] == dataset.ids[1]
    assert sample["meta"]["valid_box"].tolist() == [4, 0, 48, 64]
    assert sample["image"].shape == (3, 56, 64) and sample["semseg"].dtype == torch.int64
    assert (sample["semseg"][:4] == 255).all() and (sample["edge"][:4] == 255).all()
    assert (sample["depth"][:, :4] == 0).all() and (sample["normals"][:, :4] == 0).all()
    np.testing.assert_array_equal(sample["depth"][0, 4 + 10, 20].item(), scene.depth[10, 20])
    np.testing.assert_allclose(sample["normals"][:, 14, 20].numpy(), scene.normals[10, 20])


def test_any_subset_of_tasks(nyud_invpt):
    raw = NYUDv2(nyud_invpt.root, "train", ["depth"]).load_raw(0)
    assert sorted(raw) == ["depth", "id", "image"]
    with pytest.raises(ValueError, match="no labels for \\['sal'\\]"):
        NYUDv2(nyud_invpt.root, "train", ["depth", "sal"])
    with pytest.raises(ValueError, match="unknown tasks"):
        NYUDv2(nyud_invpt.root, "train", ["segmentation"])


def test_scale_augmentation_rescales_depth(nyud_atrc):
    raw = NYUDv2(nyud_atrc.root, "train", ["depth", "normals"]).load_raw(0)
    scaled = rescale(raw, 2.0)
    np.testing.assert_allclose(scaled["depth"][::2, ::2], raw["depth"] / 2.0)
    np.testing.assert_array_equal(scaled["normals"][::2, ::2], raw["normals"])


def test_training_samples_flip_normals(nyud_atrc):
    dataset = NYUDv2(nyud_atrc.root, "train", ["normals", "semseg"])
    raw = dataset.load_raw(2)

    class NoScaleFlip:  # scale 1, crop at 0, flip, no photometric change
        def __init__(self):
            self.values = iter([0.1, 0.9, 0.9, 0.9, 0.9, 0.9])

        def uniform(self, low, high):
            return 1.0

        def integers(self, low, high):
            return 0

        def random(self):
            return next(self.values)

    sample = TrainTransform((48, 64), cat_max_ratio=1.0)(raw, rng=NoScaleFlip())
    flipped = raw["normals"][:, ::-1]
    np.testing.assert_allclose(sample["normals"][0].numpy(), -flipped[..., 0])
    np.testing.assert_allclose(sample["normals"][1:].numpy(), flipped[..., 1:].transpose(2, 0, 1))
    np.testing.assert_array_equal(sample["semseg"].numpy(), raw["semseg"][:, ::-1])


def copy_tree(tree, tmp_path):
    return shutil.copytree(tree.root, tmp_path / "NYUD_MT")


def test_missing_root_shows_layout_and_download(tmp_path):
    with pytest.raises(DatasetLayoutError) as error:
        NYUDv2(tmp_path / "nowhere", "train", TASKS)
    message = str(error.value)
    assert (
        "nowhere" in message and "gt_sets/{train,val}.txt" in message and "segmentation/<id>.png" in message
    )
    assert "https://github.com/brdav/atrc" in message


def test_missing_split_file_and_folder(nyud_atrc, tmp_path):
    with pytest.raises(
        DatasetLayoutError, match=r"missing split file .*test\.txt \(found \['train.txt', 'val.txt'\]"
    ):
        NYUDv2(nyud_atrc.root, "test", TASKS)
    root = copy_tree(nyud_atrc, tmp_path)
    shutil.rmtree(root / "normals")
    NYUDv2(root, "train", ["semseg"])  # normals not needed
    with pytest.raises(DatasetLayoutError, match="missing folder .*normals"):
        NYUDv2(root, "train", TASKS)


def test_missing_file_is_named_at_construction(nyud_atrc, tmp_path):
    root = copy_tree(nyud_atrc, tmp_path)
    (root / "depth" / "0002.npy").unlink()
    with pytest.raises(DatasetLayoutError, match=r"1 missing file\(s\) in .*depth:\n  .*0002\.npy"):
        NYUDv2(root, "train", TASKS)


def test_corrupt_files_are_named(nyud_atrc, tmp_path):
    root = copy_tree(nyud_atrc, tmp_path)
    (root / "depth" / "0001.npy").write_bytes(b"not a numpy file")
    (root / "images" / "0002.jpg").write_bytes(b"\xff\xd8 truncated")
    Image.fromarray(np.full((48, 64), 41, np.uint8)).save(root / "segmentation" / "0003.png")
    dataset = NYUDv2(root, "train", TASKS)
    with pytest.raises(CorruptFileError, match="cannot read .*depth/0001.npy"):
        dataset.load_raw(0)
    with pytest.raises(CorruptFileError, match="cannot read .*images/0002.jpg"):
        dataset[1]
    with pytest.raises(CorruptFileError, match="0003.png: semseg values up to 41"):
        dataset.load_raw(2)


def test_wrong_shape_label_is_named(nyud_atrc, tmp_path):
    root = copy_tree(nyud_atrc, tmp_path)
    np.save(root / "normals" / "0001.npy", np.zeros((48, 60, 3), np.float32))
    Image.fromarray(np.zeros((40, 64), np.uint8)).save(root / "segmentation" / "0002.png")
    dataset = NYUDv2(root, "train", TASKS)
    with pytest.raises(
        LabelShapeError, match=r"normals label .*0001.npy has shape \(48, 60, 3\), expected .* \(48, 64\)"
    ):
        dataset.load_raw(0)
    with pytest.raises(LabelShapeError, match=r"semseg label .*0002.png has shape \(40, 64\)"):
        dataset.load_raw(1)


@pytest.mark.parametrize("packaging", ["atrc", "invpt"])
def test_boundary_metric_ground_truth_is_seg2bmap_of_the_edge_file(
    packaging, nyud_atrc, nyud_invpt, seg2bmap_by_definition
):
    """As SEISM's db_gt.m reads it: the edge file as a label image, then seg2bmap (the metric thins)."""
    tree = nyud_atrc if packaging == "atrc" else nyud_invpt
    dataset = NYUDv2(tree.root, "val", TASKS)
    for index, image_id in enumerate(dataset.ids):
        if packaging == "atrc":
            labels = np.load(tree.root / "edge" / f"{image_id}.npy")
        else:
            labels = np.asarray(Image.open(tree.root / "edge" / f"{image_id}.png")).astype(np.uint32)
        raw = dataset.load_raw(index)
        assert raw["edge_seism"].dtype == np.uint8
        np.testing.assert_array_equal(raw["edge_seism"], seg2bmap_by_definition(labels))
        assert raw["edge_seism"].any() and not np.array_equal(raw["edge_seism"], raw["edge"])
    sample = NYUDv2(tree.root, "val", TASKS, transform=EvalTransform((56, 64)))[0]
    assert sample["edge_seism"].dtype == torch.uint8 and (sample["edge_seism"][:4] == 255).all()
    np.testing.assert_array_equal(sample["edge_seism"][4:52].numpy(), dataset.load_raw(0)["edge_seism"])
    assert "edge_seism" not in NYUDv2(tree.root, "val", ["depth"]).load_raw(0)


def test_negative_depth_is_invalid_with_a_warning(nyud_atrc, tmp_path):
    """The protocol, the loss, the metric and the reference evaluators ignore depth <= 0."""
    root = copy_tree(nyud_atrc, tmp_path)
    depth = np.load(root / "depth" / "0001.npy")
    depth[5:7, 10:15] = -0.5
    np.save(root / "depth" / "0001.npy", depth)
    dataset = NYUDv2(root, "train", ["depth"])
    with pytest.warns(
        InvalidLabelWarning, match=r"depth/0001.npy: 10 negative depth values, treated as invalid"
    ):
        loaded = dataset.load_raw(0)["depth"]
    assert (loaded[5:7, 10:15] == 0).all() and (loaded >= 0).all()
    np.testing.assert_array_equal(loaded[depth >= 0], depth[depth >= 0])
    depth[0, 0] = np.nan
    np.save(root / "depth" / "0001.npy", depth)
    with pytest.raises(CorruptFileError, match="0001.npy: depth has 1 NaN or infinite values"):
        dataset.load_raw(0)
