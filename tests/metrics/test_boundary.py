"""ODS-F of the SEISM protocol on hand-made boundary maps (lines kept away from the 5-pixel border fade)."""

import numpy as np
import pytest
import torch

from tiger.metrics import BoundaryF, evaluate_boundaries
from tiger.metrics.boundary_matching import MATCHED_GT, MATCHED_PRED, NUM_GT, NUM_PRED, SEISM_THRESHOLDS

SIZE = (40, 40)
MAX_DIST = 0.05  # radius 0.05 * diagonal (56.6 px) = 2.83 px


def line(column: int, rows=range(8, 32), value: float = 1.0) -> torch.Tensor:
    image = torch.zeros(SIZE)
    image[list(rows), column] = value
    return image


def score(prediction: torch.Tensor, target: torch.Tensor) -> BoundaryF:
    metric = BoundaryF(MAX_DIST)
    metric.update(prediction[None], target[None])
    return metric


def test_thresholds_are_the_protocols_101():
    expected = [0.001] + [i / 100 for i in range(1, 100)] + [0.999]
    np.testing.assert_allclose(SEISM_THRESHOLDS, expected)


def test_a_perfect_map_scores_one():
    assert score(line(20), line(20)).compute()["odsF"].item() == pytest.approx(100.0)


def test_a_map_shifted_within_the_tolerance_still_scores_one():
    assert score(line(22), line(20)).compute()["odsF"].item() == pytest.approx(100.0)


def test_a_map_shifted_beyond_the_tolerance_scores_what_the_counts_say():
    assert score(line(25), line(20)).compute()["odsF"].item() == pytest.approx(0.0)
    # half the prediction on the boundary (12 px), half far away (12 px); the ground truth has 24 px:
    # P = 12 / 24, R = 12 / 24 -> F = 0.5
    prediction = line(20, rows=range(8, 20)) + line(30, rows=range(8, 20))
    metric = score(prediction, line(20))
    counts = metric.counts[:, 0]
    assert counts[[MATCHED_PRED, NUM_PRED, MATCHED_GT, NUM_GT]].tolist() == [12, 24, 12, 24]
    assert metric.compute()["odsF"].item() == pytest.approx(50.0)


def test_binarisation_is_strict():
    # 0.2 is exact in uint8 (51 / 255): positive at t = 0.19, not at t = 0.20
    metric = score(line(20, value=0.2), line(20))
    num_pred = metric.counts[NUM_PRED]
    index = {round(float(t), 3): i for i, t in enumerate(SEISM_THRESHOLDS)}
    assert num_pred[index[0.19]] == 24 and num_pred[index[0.2]] == 0


def test_padding_is_cropped_before_matching():
    target = torch.full((48, 48), 255.0)
    target[4:44, 4:44] = line(20)
    prediction = torch.zeros(48, 48)
    prediction[4:44, 4:44] = line(20)
    prediction[0, :] = 1.0  # in the padding: must not count
    metric = BoundaryF(MAX_DIST)
    metric.update(prediction[None], target[None])
    assert metric.counts[NUM_PRED, 0] == 24
    assert metric.compute()["odsF"].item() == pytest.approx(100.0)


def test_counts_are_pooled_over_images():
    metric = BoundaryF(MAX_DIST)
    metric.update(torch.stack([line(20), line(30)]), torch.stack([line(20), line(20)]))
    # image 1 perfect, image 2 nothing matched: P = 24 / 48, R = 24 / 48
    assert metric.compute()["odsF"].item() == pytest.approx(50.0)
    assert metric.compute()["oisF"].item() == pytest.approx(50.0)


def two_images() -> tuple[torch.Tensor, torch.Tensor]:
    """Image A: the boundary at 0.9 plus far noise at 0.3; image B: the boundary at 0.3 plus far noise at
    0.9 (0.3 and 0.9 are saved as 76 / 255 = 0.298 and 229 / 255 = 0.898)."""
    a = line(20, value=0.9) + line(30, value=0.3)
    b = line(20, value=0.3) + line(30, value=0.9)
    return torch.stack([a, b]), torch.stack([line(20), line(20)])


def test_ois_takes_each_images_best_threshold_and_ap_integrates_the_pooled_curve():
    prediction, target = two_images()
    # the counts below are those of a maximum matching; "bsds" can give up a pair at some thresholds
    # (its sparse random outlier links: tests/metrics/test_boundary_bsds.py)
    metric = BoundaryF(MAX_DIST, matching="maximum")
    metric.update(prediction, target)
    values = metric.compute()
    # t < 0.298: P = 48 / 96, R = 1 -> F = 2/3; 0.3 <= t < 0.898: P = R = 24 / 48 -> F = 1/2; above: nothing
    assert values["odsF"].item() == pytest.approx(100 * 2 / 3)
    assert values["ods_threshold"].item() == pytest.approx(0.001)
    # A is best at t = 0.30 (24 of 24 matched), B at t = 0.001 (24 of 48): P = 48 / 72, R = 1 -> F = 0.8
    assert values["oisF"].item() == pytest.approx(80.0)
    # PR points (R, P): (1, 0.5), (0.5, 0.5), (0, 0); precision at recall 0, 0.01, ..., 1 summed x 0.01
    expected_ap = (sum(k / 100 for k in range(51)) + 0.5 * 50) * 0.01
    assert values["AP"].item() == pytest.approx(100 * expected_ap)


def test_states_sum_across_processes():
    prediction, target = two_images()
    whole = BoundaryF(MAX_DIST)
    whole.update(prediction, target)
    first, second = BoundaryF(MAX_DIST), BoundaryF(MAX_DIST)  # two "processes", one image each
    first.update(prediction[0], target[0])  # a single (H, W) sample works too
    second.update(prediction[1:], target[1:])
    first.merge_state(second)  # what torchmetrics' DDP sync does with the "sum" states
    for key, value in whole.compute().items():
        assert first.compute()[key].item() == pytest.approx(value.item()), key


def test_folder_helper_with_a_process_pool_equals_the_metric():
    prediction, target = two_images()
    metric = BoundaryF(MAX_DIST, workers=2)
    metric.update(prediction, target)
    saved = [
        (np.floor(p.numpy() * 255).astype(np.uint8), t.numpy())
        for p, t in zip(prediction, target, strict=True)
    ]
    scores = evaluate_boundaries(saved, MAX_DIST, workers=2)
    for key, value in metric.compute().items():
        assert scores[key] == pytest.approx(value.item()), key


def test_bad_targets_are_rejected():
    target = line(20)
    target[5, 5] = 255.0  # an ignored pixel inside the image is not padding
    with pytest.raises(ValueError, match="inside its valid region"):
        score(line(20), target)
    with pytest.raises(ValueError, match="no valid pixel"):
        score(line(20), torch.full(SIZE, 255.0))
    with pytest.raises(ValueError, match=r"\{0, 1, 255\}"):
        score(line(20), line(20) * 0.5)
