"""tiger.inference on a checkpoint of a real (4-step) training run: sizes, units, routing, errors."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tiger.analysis.routing import RoutingStatistics, counterfactual_importance, mean_usage, shapley_credit
from tiger.experts import ExpertWeightsError
from tiger.inference import Prediction, Predictor, latest_checkpoint, load_model
from tiger.model.checkpoint import read_checkpoint
from tiger.tasks import NUM_HUMAN_PARTS


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint: Path) -> Predictor:
    return load_model(tiny_checkpoint)


def _random_image(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def check_units(predictor: Predictor, prediction: Prediction, size: tuple[int, int]) -> None:
    """Every task at exactly ``size``, in the documented units."""
    assert prediction.size == size
    assert set(prediction) == set(predictor.task_names)
    channels = {task.name: task.channels for task in predictor.tasks}
    for name, array in prediction.items():
        expected = (*size, 3) if name == "normals" else size
        assert array.shape == expected, name
        assert np.isfinite(array).all(), name
    for name in ("semseg", "human_parts"):
        assert prediction[name].dtype == np.int64
        assert prediction[name].min() >= 0 and prediction[name].max() < channels[name]
    assert channels["human_parts"] == NUM_HUMAN_PARTS
    assert prediction["depth"].dtype == np.float32 and prediction["depth"].min() > 0
    norms = np.linalg.norm(prediction["normals"].astype(np.float64), axis=-1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-4)
    for name in ("sal", "edge"):
        assert prediction[name].dtype == np.float32
        assert prediction[name].min() >= 0.0 and prediction[name].max() <= 1.0
        assert prediction[name].std() > 0  # a real map, not a constant


def test_predicts_any_size_in_user_units(predictor: Predictor) -> None:
    rgb = _random_image(37, 91, seed=0)
    grey = Image.fromarray(_random_image(300, 200, seed=1)[..., 0], mode="L")
    predictions = predictor.predict([rgb, grey], routing=True)
    check_units(predictor, predictions[0], (37, 91))
    check_units(predictor, predictions[1], (300, 200))
    for prediction in predictions:
        routing = prediction.routing
        tasks, experts = len(predictor.task_names), len(predictor.expert_names)
        assert routing.alpha.shape == (tasks, experts, routing.grid[0] * routing.grid[1])
        np.testing.assert_allclose(routing.alpha.sum(1), 1.0, atol=1e-5)
        assert routing.task_names == predictor.task_names and routing.expert_names == predictor.expert_names
    # a greyscale image predicts like its RGB copy
    again = predictor.predict([np.repeat(np.asarray(grey)[..., None], 3, axis=-1)])[0]
    np.testing.assert_array_equal(again["semseg"], predictions[1]["semseg"])


def test_token_grid_keeps_the_aspect_ratio(predictor: Predictor, tiny_checkpoint: Path) -> None:
    assert predictor.grid == (4, 5)  # the synthetic default
    assert predictor.token_grid(64, 80) == (4, 5)
    assert predictor.token_grid(480, 640) == (4, 5)  # 0.75 vs 0.8: within tolerance, the training grid
    assert predictor.token_grid(300, 200) == (5, 4)  # portrait: sqrt(20 * 1.5) = 5.5 -> 5, sqrt(20 / 1.5)
    assert predictor.token_grid(37, 91) == (3, 7)  # sqrt(20 * 37 / 91) = 2.85, sqrt(20 * 91 / 37) = 7.01
    stretched = load_model(tiny_checkpoint, keep_aspect=False)
    assert stretched.token_grid(300, 200) == (4, 5)
    assert stretched.predict([_random_image(300, 200, seed=2)], routing=True)[0].routing.grid == (4, 5)


def test_predictions_match_the_model_at_the_training_size(predictor: Predictor) -> None:
    """At the training size (64x80 = grid x 16) nothing is resized: the predictions are the model's."""
    images = torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    predictions = predictor.predict(images, routing=True)
    with torch.no_grad():
        output = predictor.model(images)
    for index, prediction in enumerate(predictions):
        for task in predictor.tasks:
            expected = task.postprocess(output.predictions[task.name])[index]
            if task.name == "normals":
                expected = expected.permute(1, 2, 0)
            elif task.name == "depth":
                expected = expected[0]
            np.testing.assert_allclose(prediction[task.name], expected.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(prediction.routing.alpha, output.alpha[index].numpy(), atol=1e-6)
    # a list of the same images and a batch tensor give the same predictions
    listed = predictor.predict([image for image in images])
    np.testing.assert_array_equal(listed[1]["depth"], predictions[1]["depth"])


def test_bad_images_are_rejected_with_a_reason(predictor: Predictor) -> None:
    with pytest.raises(ValueError, match=r"image 1: float values must lie in \[0, 1\]"):
        predictor.predict([np.zeros((8, 8, 3), np.float32), np.full((8, 8, 3), 255.0, np.float32)])
    with pytest.raises(ValueError, match="image 0: expected an \\(H, W, 3\\)"):
        predictor.predict([np.zeros((8, 8, 4), np.uint8)])
    with pytest.raises(ValueError, match="unknown tasks \\['segmentation'\\]"):
        predictor.predict([np.zeros((8, 8, 3), np.uint8)], tasks=["segmentation"])


def test_routing_report_usage_and_agreement(predictor: Predictor) -> None:
    images = torch.rand(3, 3, 64, 80, generator=torch.Generator().manual_seed(1))
    report = predictor.routing_report(images)
    with torch.no_grad():
        output = predictor.model(images)
    expected = mean_usage(output.alpha, predictor.task_names, predictor.expert_names)
    for task in predictor.task_names:
        assert sum(report.usage[task].values()) == pytest.approx(1.0, abs=1e-6)
        for expert in predictor.expert_names:
            assert report.usage[task][expert] == pytest.approx(expected[task][expert], abs=1e-6)
    assert report.agreement is None and report.shapley is None and predictor.expert_names[0] in str(report)

    # targets for every task; depth has no valid pixel in the first token column (16 pixels wide)
    generator = torch.Generator().manual_seed(2)
    targets = {
        "semseg": torch.randint(0, 8, (3, 64, 80), generator=generator),
        "human_parts": torch.randint(0, NUM_HUMAN_PARTS, (3, 64, 80), generator=generator),
        "sal": torch.randint(0, 2, (3, 64, 80), generator=generator),
        "edge": torch.randint(0, 2, (3, 64, 80), generator=generator).float(),
        "normals": F.normalize(torch.randn(3, 3, 64, 80, generator=generator), dim=1),
        "depth": torch.rand(3, 1, 64, 80, generator=generator) * 5 + 0.5,
    }
    targets["depth"][..., :16] = 0.0
    report = predictor.routing_report(images, targets)
    config = predictor.loss_config
    expected_statistics = RoutingStatistics(
        predictor.task_names, predictor.expert_names, [config.removal], True
    )
    expected_statistics.update(
        output.alpha,
        {config.removal: counterfactual_importance(predictor.model, output, targets, config)},
        shapley_credit(predictor.model, output, targets, config.removal),
    )
    expected_summary = expected_statistics.compute()
    expected = expected_summary["target_agreement"][config.removal]
    assert list(report.agreement) == predictor.task_names
    for task, row in expected_summary["shapley"].items():
        for key in ("spearman", "top1", "useless_mass", "tokens"):
            assert report.shapley[task][key] == pytest.approx(row[key], abs=1e-6, nan_ok=True)
    assert report.agreement["depth"]["tokens"] == 3 * 4 * 4  # 3 images, 4 rows x 4 valid columns
    assert report.agreement["semseg"]["tokens"] == 3 * 4 * 5
    for task, row in expected.items():
        for key in ("jsd", "top1", "spearman", "tokens"):
            assert report.agreement[task][key] == pytest.approx(row[key], abs=1e-6, nan_ok=True)
        assert 0.0 <= report.agreement[task]["jsd"] <= math.log(2)
    assert "Spearman" in str(report) and "Shapley" in str(report)

    # targets for some tasks: the same numbers for those (the other tasks do not enter their Delta)
    partial = predictor.routing_report(images, {"depth": targets["depth"], "sal": targets["sal"]})
    assert list(partial.agreement) == ["depth", "sal"]
    for task in ("depth", "sal"):
        for key in ("jsd", "top1", "spearman", "tokens"):
            assert partial.agreement[task][key] == pytest.approx(
                report.agreement[task][key], abs=1e-6, nan_ok=True
            )
    with pytest.raises(ValueError, match="target 'depth' has shape"):
        predictor.routing_report(images, {"depth": targets["depth"][:, :, :32]})


def test_not_a_tiger_checkpoint(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match=r"not a TIGER checkpoint: .*foreign.ckpt has no 'tiger' section"):
        load_model(foreign)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"this is no checkpoint" * 10)
    with pytest.raises(ValueError, match=r"not a TIGER checkpoint: .*garbage.ckpt cannot be read"):
        load_model(garbage)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_model(tmp_path / "missing.ckpt")


def test_unknown_format_and_changed_keys(tiny_checkpoint: Path, tmp_path: Path) -> None:
    checkpoint = read_checkpoint(tiny_checkpoint)
    future = tmp_path / "future.ckpt"
    torch.save({**checkpoint, "tiger": {**checkpoint["tiger"], "format": 99}}, future)
    with pytest.raises(ValueError, match="not a TIGER checkpoint: .* tiger format 99"):
        load_model(future)

    state = dict(checkpoint["state_dict"])
    dropped = "net.heads.heads.depth.1.bias"
    assert dropped in state
    del state[dropped]
    state["net.extra.weight"] = torch.zeros(2)
    grown = "net.heads.heads.normals.1.weight"
    state[grown] = torch.zeros(4, *state[grown].shape[1:])
    changed = tmp_path / "changed.ckpt"
    torch.save({**checkpoint, "state_dict": state}, changed)
    with pytest.raises(ValueError) as error:
        load_model(changed)
    message = str(error.value)
    assert f"{changed}: the checkpoint does not fit this TIGER configuration" in message
    assert 'Missing key(s) in state_dict: "heads.heads.depth.1.bias"' in message
    assert 'Unexpected key(s) in state_dict: "extra.weight"' in message
    assert (
        "size mismatch for heads.heads.normals.1.weight: copying a param with shape torch.Size([4," in message
    )


def test_expert_weights_overrides(tiny_checkpoint: Path, tmp_path: Path) -> None:
    roles = list(read_checkpoint(tiny_checkpoint)["tiger"]["net"]["experts"])
    with pytest.raises(ValueError, match=r"expert_weights names roles \['vit'\]"):
        load_model(tiny_checkpoint, expert_weights={"vit": "x.pth"})
    missing = tmp_path / "sam_vit_b.pth"
    with pytest.raises(ExpertWeightsError, match="--expert-weights role=path") as error:
        load_model(tiny_checkpoint, expert_weights={roles[0]: str(missing)})
    assert str(missing) in str(error.value)


def test_latest_checkpoint(tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIGER_CHECKPOINT", str(tiny_checkpoint))
    assert latest_checkpoint() == tiny_checkpoint
    monkeypatch.setenv("TIGER_CHECKPOINT", str(tmp_path / "nope.ckpt"))
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        latest_checkpoint()
    monkeypatch.delenv("TIGER_CHECKPOINT")
    project = tmp_path / "project"
    runs = project / "outputs" / "train" / "runs"
    for name in ("old", "new"):
        (runs / name / "checkpoints").mkdir(parents=True)
        (runs / name / "checkpoints" / "last.ckpt").write_bytes(name.encode())
    newest = runs / "new" / "checkpoints" / "last.ckpt"
    older = runs / "old" / "checkpoints" / "last.ckpt"
    older.touch()
    os.utime(newest, (older.stat().st_mtime + 10, older.stat().st_mtime + 10))
    (project / "notebooks").mkdir()
    assert latest_checkpoint(start=project / "notebooks") == newest
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(FileNotFoundError, match="python -m tiger.train"):
        latest_checkpoint(start=tmp_path / "elsewhere")


def test_batches_are_bounded_by_pixels_not_only_by_count(predictor: Predictor) -> None:
    images = [torch.rand(3, 64, 80) for _ in range(5)] + [torch.rand(3, 32, 40)]
    bounded = Predictor(predictor.model, batch_size=8, batch_pixels=2 * 64 * 80)
    assert list(bounded._batches(images)) == [[0, 1], [2, 3], [4], [5]]
    assert list(Predictor(predictor.model, batch_size=8, batch_pixels=1)._batches(images[:2])) == [[0], [1]]
    for one, other in zip(bounded.predict(images), predictor.predict(images), strict=True):
        np.testing.assert_allclose(one["depth"], other["depth"], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="batch_pixels must be >= 1"):
        Predictor(predictor.model, batch_pixels=0)
