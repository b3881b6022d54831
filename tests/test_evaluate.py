"""python -m tiger.evaluate on a miniature NYUD_MT tree written by the synthetic generator."""

import json

import numpy as np
import pytest
from PIL import Image

from tiger.data import NYUDv2
from tiger.data.synthetic import write_nyud_tree
from tiger.evaluate import evaluate_folder, main
from tiger.metrics.boundary_ops import thin

TASKS = ["semseg", "depth", "normals", "edge"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_nyud_tree(tmp_path_factory.mktemp("data") / "NYUD_MT", num_train=1, num_val=3, size=(48, 64))


def write_predictions(folder, tree, perturb_depth: float = 0.0, edge: str = "metric"):
    """Save the ground truth of the val split as predictions, in the format tiger.predict writes.

    ``edge``: "metric" saves the boundary metric's ground truth (SEISM's thinned seg2bmap of the edge png),
    "training" the training edge target.
    """
    data = NYUDv2(tree.root, "val", TASKS)
    for index in range(len(data)):
        raw = data.load_raw(index)
        sample_id = raw["id"]
        for task in TASKS:
            (folder / task).mkdir(parents=True, exist_ok=True)
        semseg = np.where(raw["semseg"] == 255, 0, raw["semseg"]).astype(np.uint8)
        Image.fromarray(semseg).save(folder / "semseg" / f"{sample_id}.png")
        boundary = thin(raw["edge_seism"] == 1) if edge == "metric" else raw["edge"] == 1
        Image.fromarray(boundary.astype(np.uint8) * 255).save(folder / "edge" / f"{sample_id}.png")
        depth = np.squeeze(raw["depth"]).astype(np.float32)
        np.save(folder / "depth" / f"{sample_id}.npy", depth + perturb_depth)
        normals = raw["normals"].astype(np.float32)
        normals = np.where(np.linalg.norm(normals, axis=-1, keepdims=True) > 0, normals, [0.0, 0.0, 1.0])
        np.save(folder / "normals" / f"{sample_id}.npy", normals.astype(np.float32))


def test_ground_truth_as_predictions_scores_perfectly(tree, tmp_path):
    write_predictions(tmp_path, tree)
    results = evaluate_folder(tmp_path, "nyud", str(tree.root), "val")
    assert results["depth"]["rmse"] == pytest.approx(0.0, abs=1e-5)
    assert results["normals"]["mErr"] == pytest.approx(0.0, abs=0.05)
    # the protocol's NMS still thins a few pixels where two ground-truth lines run side by side
    assert 99.0 < results["edge"]["odsF"] <= 100.0
    present = results["semseg"]
    assert present["pixel_acc"] == pytest.approx(100.0)


def test_boundaries_are_scored_against_the_seism_ground_truth_not_the_training_target(tree, tmp_path):
    """The SEISM ground truth is thin(seg2bmap(edge png)): on these 48x64 maps (tolerance < 1 pixel) the
    training edge lines, which sit half a pixel away from it, match only part of it."""
    write_predictions(tmp_path, tree, edge="training")
    results = evaluate_folder(tmp_path, "nyud", str(tree.root), "val", ["edge"])
    assert 20.0 < results["edge"]["odsF"] < 80.0


def test_a_known_depth_offset_gives_that_rmse_and_the_cli_writes_json(tree, tmp_path, capsys):
    write_predictions(tmp_path, tree, perturb_depth=0.25)
    main([str(tmp_path), "--dataset", "nyud", "--root", str(tree.root)])
    results = json.loads((tmp_path / "metrics.json").read_text())
    assert results["depth"]["rmse"] == pytest.approx(0.25, abs=1e-4)
    assert "Depth" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # never overwrites the results of an earlier evaluation
        main([str(tmp_path), "--dataset", "nyud", "--root", str(tree.root)])


def test_a_missing_prediction_is_named(tree, tmp_path):
    write_predictions(tmp_path, tree)
    victim = sorted((tmp_path / "depth").iterdir())[1]
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=victim.name):
        evaluate_folder(tmp_path, "nyud", str(tree.root), "val")


def test_invalid_prediction_values_are_named_per_file(tree, tmp_path):
    write_predictions(tmp_path, tree)
    depth = sorted((tmp_path / "depth").iterdir())[0]
    broken = np.load(depth)
    broken[0, 0] = np.nan
    np.save(depth, broken)
    with pytest.raises(ValueError, match=rf"prediction {depth}: 1 non-finite depths"):
        evaluate_folder(tmp_path, "nyud", str(tree.root), "val")
    write_predictions(tmp_path, tree)
    semseg = sorted((tmp_path / "semseg").iterdir())[2]
    labels = np.asarray(Image.open(semseg)).copy()
    labels[0, 0] = 200
    Image.fromarray(labels).save(semseg)
    with pytest.raises(
        ValueError, match=rf"prediction {semseg}: class ids must lie in \[0, 40\), found \[200\]"
    ):
        evaluate_folder(tmp_path, "nyud", str(tree.root), "val")
