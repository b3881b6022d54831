"""The PASCAL-Context reader on a miniature PASCAL_MT tree written by the generator."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from skimage.morphology import thin

from tiger.data import CorruptFileError, DatasetLayoutError, LabelShapeError, PascalContext
from tiger.data.pascal import HUMAN_PART_GROUPS, NORMALS_VALID_CONTEXT_IDS, PERSON_CLASS, edge_from_label_map
from tiger.data.synthetic.scenes import PERSON, PLANT
from tiger.data.synthetic.trees import CONTEXT_CLASS_IDS, VOC_CLASS_IDS, pascal_voc_semseg
from tiger.metrics import NormalsError

TASKS = ["semseg", "human_parts", "sal", "normals", "edge"]


@pytest.fixture
def dataset(pascal_tree):
    return PascalContext(pascal_tree.root, "train", TASKS)


def test_semseg_prefers_voc12(dataset, pascal_tree):
    for index, image_id in enumerate(dataset.ids):
        scene = pascal_tree.scene(image_id)
        raw = dataset.load_raw(index)
        if (pascal_tree.root / "semseg" / "VOC12" / f"{image_id}.png").exists():
            np.testing.assert_array_equal(raw["semseg"], pascal_voc_semseg(scene))
            assert (raw["semseg"] == 255).any()
        else:
            np.testing.assert_array_equal(raw["semseg"], VOC_CLASS_IDS[scene.semseg])
    assert dataset.num_semseg_classes == 21


def test_human_parts_from_the_mat_struct(dataset, pascal_tree):
    counts = {0: 0, 1: 0, 2: 0}
    for index, image_id in enumerate(dataset.ids):
        scene = pascal_tree.scene(image_id)
        persons = len(scene.instances_of(PERSON))
        counts[min(persons, 2)] += 1
        assert dataset.has_person[index] == (persons > 0)
        raw = dataset.load_raw(index)
        np.testing.assert_array_equal(raw["human_parts"], scene.parts)  # all persons merged, 6 groups
        if persons == 0:
            assert not raw["human_parts"].any()
            assert (dataset[index]["human_parts"] == 255).all()  # a map without parts is ignored entirely
        else:
            assert (dataset[index]["human_parts"].numpy() == scene.parts).all()
    assert counts[0] and counts[1] and counts[2]


def test_written_mat_has_the_reference_layout(pascal_tree):
    """mat['anno'][0][0][1][0] objects: o[1][0][0] class, o[2] mask, o[3][0][i][0][0] part name, [1] mask."""
    image_id = pascal_tree.splits["train"][1]  # two people
    scene = pascal_tree.scene(image_id)
    objects = scipy.io.loadmat(pascal_tree.root / "human_parts" / f"{image_id}.mat")["anno"][0][0][1][0]
    people = [o for o in objects if o[1][0][0] == PERSON_CLASS]
    assert len(people) == 2 and all(len(o[3]) != 0 for o in objects if o[1][0][0] == PERSON_CLASS)
    merged = np.zeros(scene.parts.shape, np.uint8)
    for person in people:
        assert person[2].shape == scene.parts.shape and person[2].any()
        for part in person[3][0]:
            merged[part[1].astype(bool)] = HUMAN_PART_GROUPS[str(part[0][0])]
    np.testing.assert_array_equal(merged, scene.parts)
    others = [o for o in objects if o[1][0][0] != PERSON_CLASS]
    assert others and all(len(o[3]) == 0 for o in others)


def tree_files(root) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()
    }


def test_parts_cache_goes_to_the_user_cache_never_into_the_data_set(pascal_tree, user_cache):
    before = tree_files(pascal_tree.root)
    PascalContext(pascal_tree.root, "val", ["semseg"])
    assert not user_cache.exists()  # only human_parts needs it
    dataset = PascalContext(pascal_tree.root, "val", ["human_parts"])
    cache = dataset.parts_cache()
    assert cache.is_relative_to(user_cache / "pascal_parts") and cache.name == "val.txt"
    categories = json.loads(cache.read_text())
    assert sorted(categories) == sorted(dataset.ids)
    for image_id, ids in categories.items():
        scene = pascal_tree.scene(image_id)
        visible = [
            VOC_CLASS_IDS[scene.instance_class[i]] for i in sorted(set(np.unique(scene.instance).tolist()))
        ]
        assert ids == [int(v) for v in visible if v > 0]
    assert tree_files(pascal_tree.root) == before  # nothing written into the data folder
    # our cache is reused; a stale one (other ids) is rebuilt; a corrupt one is named
    cache.write_text(json.dumps({"other": [15]}))
    PascalContext(pascal_tree.root, "val", ["human_parts"])
    assert sorted(json.loads(cache.read_text())) == sorted(dataset.ids)
    cache.write_text("{not json")
    with pytest.raises(CorruptFileError, match="pascal_parts/.*/val.txt is not valid JSON"):
        PascalContext(pascal_tree.root, "val", ["human_parts"])
    # cache_dir= puts it elsewhere (e.g. the run folder)
    elsewhere = PascalContext(
        pascal_tree.root, "val", ["human_parts"], cache_dir=pascal_tree.root.parent / "run"
    )
    assert elsewhere.parts_cache().is_file() and elsewhere.parts_cache().is_relative_to(
        pascal_tree.root.parent
    )
    assert tree_files(pascal_tree.root) == before


def test_a_shipped_parts_file_is_read_and_never_rewritten(pascal_tree, user_cache):
    """The data set's own ImageSets/Parts/<split>.txt decides who has people, as in the reference code."""
    categories = {
        i: c
        for i, c in json.loads(
            PascalContext(pascal_tree.root, "train", ["human_parts"]).parts_cache().read_text()
        ).items()
    }
    first = pascal_tree.splits["train"][0]
    assert PERSON_CLASS in categories[first]
    categories[first] = [c for c in categories[first] if c != PERSON_CLASS]
    shipped = pascal_tree.root / "ImageSets" / "Parts" / "train.txt"
    shipped.parent.mkdir(parents=True)
    shipped.write_text(json.dumps(categories))
    dataset = PascalContext(pascal_tree.root, "train", ["human_parts"])
    assert not dataset.has_person[0] and not dataset.load_raw(0)["human_parts"].any()
    # a shipped file that does not fit the split is left as it is, and our cache is used instead
    stale = json.dumps({"other": [15]})
    shipped.write_text(stale)
    dataset = PascalContext(pascal_tree.root, "train", ["human_parts"])
    assert dataset.has_person[0] and shipped.read_text() == stale


def test_normals_masked_by_label_map(dataset, pascal_tree):
    assert 308 not in NORMALS_VALID_CONTEXT_IDS and 284 in NORMALS_VALID_CONTEXT_IDS
    masked = 0
    for index, image_id in enumerate(dataset.ids):
        scene = pascal_tree.scene(image_id)
        normals = dataset.load_raw(index)["normals"]
        invalid = scene.semseg == PLANT  # pottedplant, Context 308: outside the 170 valid classes
        masked += invalid.sum()
        assert (normals[invalid] == 0).all()
        np.testing.assert_allclose(normals[~invalid], scene.normals[~invalid], atol=1 / 255 + 1e-6, rtol=0)
    assert masked > 0


def test_a_black_normals_pixel_is_the_vector_minus_one_and_counts_in_merr(pascal_tree):
    """The probe of issue 17: a (0, 0, 0) patch inside a valid class decodes, as InvPT decodes it, to
    (-1, -1, -1) and counts in mErr with the direction (-1, -1, -1) / sqrt(3); the zero-length vectors of an
    invalid class (after the LabelMap mask) are still ignored."""
    index, image_id = next(
        (i, image_id)
        for i, image_id in enumerate(pascal_tree.splits["train"])
        if (pascal_tree.scene(image_id).semseg == PLANT).any()
    )
    plant = pascal_tree.scene(image_id).semseg == PLANT  # Context 308: not a valid normals class
    windows = np.lib.stride_tricks.sliding_window_view(plant, (4, 4)).any(axis=(2, 3))
    row, col = np.argwhere(~windows)[0]
    patch = np.zeros_like(plant)
    patch[row : row + 4, col : col + 4] = True
    assert patch.sum() == 16 and not (patch & plant).any()
    path = pascal_tree.root / "normals_distill" / f"{image_id}.png"
    png = np.array(Image.open(path))
    png[patch | plant] = 0
    Image.fromarray(png).save(path)

    normals = PascalContext(pascal_tree.root, "train", ["normals"]).load_raw(index)["normals"]
    assert (normals[patch] == -1.0).all() and (normals[plant] == 0.0).all()
    target = torch.from_numpy(normals).permute(2, 0, 1)[None]
    prediction = target.clone()  # exact everywhere ...
    prediction[0, :, torch.from_numpy(patch)] = torch.tensor([0.0, 0.0, 1.0])[:, None]  # ... but the patch
    prediction[0, :, torch.from_numpy(plant)] = torch.tensor([1.0, 0.0, 0.0])[:, None]  # ignored pixels
    metric = NormalsError()
    metric.update(prediction, target)
    valid = int((~plant).sum())
    angle = np.degrees(np.arccos(-1 / np.sqrt(3)))  # (0, 0, 1) against (-1, -1, -1) / sqrt(3): 125.26 deg
    assert metric.compute()["mErr"].item() == pytest.approx(16 * angle / valid, rel=1e-6)
    assert metric.count.item() == valid  # the black patch counts, the invalid class does not


def test_saliency_threshold(dataset, pascal_tree):
    for index, image_id in enumerate(dataset.ids):
        png = np.asarray(Image.open(pascal_tree.root / "sal_distill" / f"{image_id}.png"))
        sal = dataset.load_raw(index)["sal"]
        np.testing.assert_array_equal(sal, pascal_tree.scene(image_id).sal)
        np.testing.assert_array_equal(sal, (png > 127).astype(np.uint8))
        if sal.any():
            assert {127, 128} <= set(np.unique(png).tolist())  # the soft map crosses 0.5 at the boundary


def test_edge_is_thinned_laplacian_of_the_label_map(dataset, pascal_tree):
    for index, image_id in enumerate(dataset.ids):
        label_map = scipy.io.loadmat(pascal_tree.root / "pascal-context" / "trainval" / f"{image_id}.mat")[
            "LabelMap"
        ]
        np.testing.assert_array_equal(label_map, CONTEXT_CLASS_IDS[pascal_tree.scene(image_id).semseg])
        reference = thin(np.abs(cv2.Laplacian(label_map, cv2.CV_64F)) > 0).astype(
            np.float32
        )  # the reference code
        edge = dataset.load_raw(index)["edge"]
        np.testing.assert_array_equal(edge, reference)
        assert edge.any()
    random_map = np.random.default_rng(0).integers(0, 4, (20, 30)).astype(np.uint16)
    np.testing.assert_array_equal(
        edge_from_label_map(random_map), thin(np.abs(cv2.Laplacian(random_map, cv2.CV_64F)) > 0)
    )


def test_errors_name_the_files(pascal_tree):
    root = pascal_tree.root
    with pytest.raises(
        DatasetLayoutError, match=r"(?s)PASCAL_MT root .*JPEGImages/<id>.jpg.*github.com/brdav/atrc"
    ):
        PascalContext(root / "missing", "train", TASKS)
    with pytest.raises(DatasetLayoutError, match="missing split file .*Context/trainval.txt"):
        PascalContext(root, "trainval", TASKS)
    image_id = pascal_tree.splits["train"][2]
    (root / "sal_distill" / f"{image_id}.png").unlink()
    with pytest.raises(DatasetLayoutError, match=f"sal_distill:\n  .*{image_id}.png"):
        PascalContext(root, "train", TASKS)
    PascalContext(root, "train", ["semseg", "edge"])
    scipy.io.savemat(root / "pascal-context" / "trainval" / f"{image_id}.mat", {"Labels": np.zeros((48, 64))})
    dataset = PascalContext(root, "train", ["edge"])
    with pytest.raises(CorruptFileError, match=f"{image_id}.mat: no variable 'LabelMap'"):
        dataset.load_raw(2)
    (root / "human_parts" / f"{image_id}.mat").write_text("garbage")
    with pytest.raises(CorruptFileError, match=f"cannot read .*human_parts/{image_id}.mat"):
        PascalContext(root, "train", ["human_parts"])
    other = pascal_tree.splits["train"][0]
    Image.fromarray(np.zeros((48, 63, 3), np.uint8)).save(root / "normals_distill" / f"{other}.png")
    with pytest.raises(LabelShapeError, match=rf"normals label .*{other}.png has shape \(48, 63, 3\)"):
        PascalContext(root, "train", ["normals"]).load_raw(0)


def test_only_people_with_parts_count(tmp_path):
    """Animals have PASCAL-Part parts too (with other names); a person without parts adds nothing."""
    from tiger.data.pascal import decode_human_parts

    def obj(cls, mask, parts):
        array = (
            np.empty((1, len(parts)), dtype=[("part_name", "O"), ("mask", "O")])
            if parts
            else np.zeros((0, 0))
        )
        for j, (name, part_mask) in enumerate(parts):
            array[0, j] = (name, part_mask.astype(np.uint8))
        return ("x", np.array([[cls]], np.uint8), mask.astype(np.uint8), array)

    full = np.ones((4, 6), bool)
    left, right = np.zeros((4, 6), bool), np.zeros((4, 6), bool)
    left[:, :2], right[:, 4:] = True, True
    objects = [
        obj(10, full, [("head", full), ("lfleg", full)]),  # a cow
        obj(PERSON_CLASS, left, [("head", left[:, :]), ("torso", left & (np.arange(4)[:, None] > 1))]),
        obj(PERSON_CLASS, right, []),  # a person without part annotations
    ]
    array = np.empty(
        (1, len(objects)), dtype=[("class", "O"), ("classIndex", "O"), ("mask", "O"), ("parts", "O")]
    )
    for j, o in enumerate(objects):
        array[0, j] = o
    anno = np.empty((1, 1), dtype=[("imname", "O"), ("objects", "O")])
    anno[0, 0] = ("x", array)
    scipy.io.savemat(tmp_path / "x.mat", {"anno": anno})
    parts = decode_human_parts(tmp_path / "x.mat", (4, 6))
    expected = np.zeros((4, 6), np.uint8)
    expected[:2, :2], expected[2:, :2] = 1, 2
    np.testing.assert_array_equal(parts, expected)
    with pytest.raises(
        LabelShapeError, match=r"human_parts .*x.mat has shape \(4, 6\), expected .* \(5, 6\)"
    ):
        decode_human_parts(tmp_path / "x.mat", (5, 6))


def test_boundary_metric_ground_truth_is_seg2bmap_of_the_label_map(
    dataset, pascal_tree, seg2bmap_by_definition
):
    """SEISM's PASCALContext ground truth is the LabelMap (relabelled, which keeps its boundaries)."""
    for index, image_id in enumerate(dataset.ids):
        label_map = scipy.io.loadmat(pascal_tree.root / "pascal-context" / "trainval" / f"{image_id}.mat")[
            "LabelMap"
        ]
        raw = dataset.load_raw(index)
        np.testing.assert_array_equal(raw["edge_seism"], seg2bmap_by_definition(label_map))
        assert raw["edge_seism"].any() and not np.array_equal(raw["edge_seism"], raw["edge"])
