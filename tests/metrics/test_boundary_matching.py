"""Per-image SEISM counts against a brute-force reference: skimage thinning and a max flow per threshold."""

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy import sparse
from scipy.sparse.csgraph import maximum_flow
from scipy.spatial import cKDTree
from skimage.morphology import thin as skimage_thin

import tiger.metrics.boundary_matching as matching
from tiger.metrics.boundary_matching import (
    MATCHED_GT,
    MATCHED_PRED,
    NUM_GT,
    NUM_PRED,
    SEISM_THRESHOLDS,
    sweep_counts,
)


def reference_counts(edges: np.ndarray, gt: np.ndarray, radius: float, thresholds: np.ndarray) -> np.ndarray:
    """Thin each thresholded map, then a maximum matching of pixel pairs within the radius by max flow."""
    gt_points = np.argwhere(gt)
    counts = np.zeros((4, len(thresholds)), dtype=np.int64)
    counts[NUM_GT] = len(gt_points)
    for i, t in enumerate(thresholds):
        pred_points = np.argwhere(skimage_thin(edges > t))
        counts[NUM_PRED, i] = len(pred_points)
        if len(pred_points) == 0 or len(gt_points) == 0:
            continue
        pairs = cKDTree(pred_points).sparse_distance_matrix(
            cKDTree(gt_points), radius, output_type="coo_matrix"
        )
        n_pred, n_gt = len(pred_points), len(gt_points)
        sink = n_pred + n_gt + 1
        tails = np.concatenate([np.zeros(n_pred, int), pairs.row + 1, np.arange(n_gt) + n_pred + 1])
        heads = np.concatenate([np.arange(n_pred) + 1, pairs.col + n_pred + 1, np.full(n_gt, sink)])
        network = sparse.csr_array(
            (np.ones(len(tails), np.int32), (tails, heads)), shape=(sink + 1, sink + 1)
        )
        counts[MATCHED_PRED, i] = counts[MATCHED_GT, i] = maximum_flow(network, 0, sink).flow_value
    return counts


def random_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    shape = tuple(rng.integers(24, 56, 2))
    labels = np.stack([ndi.zoom(rng.random((5, 5)), np.array(shape) / 5, order=1) for _ in range(4)]).argmax(
        0
    )
    gt = np.zeros(shape, dtype=bool)
    gt[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    gt[:-1, :] |= labels[:-1, :] != labels[1:, :]
    shifted = np.roll(gt, tuple(rng.integers(-2, 3, 2)), axis=(0, 1)).astype(float)
    response = ndi.gaussian_filter(shifted * rng.uniform(0.2, 1.0, shape), 1.0) * 3
    response += 0.3 * ndi.gaussian_filter(rng.random(shape), 2) * (rng.random(shape) < 0.5)
    edges = np.floor(np.clip(response, 0, 1) * 255) / 255
    if rng.random() < 0.5:
        edges = np.round(edges * 6) / 6  # wide plateaus: thinning changes its mind between thresholds
    return edges, skimage_thin(gt)


@pytest.mark.parametrize("work_budget", [50_000, 2])  # 2: searches give up at once, max flow takes over
def test_counts_equal_the_brute_force_reference_at_every_threshold(monkeypatch, work_budget):
    monkeypatch.setattr(matching._IncrementalMatcher.__init__, "__defaults__", (work_budget,))
    rng = np.random.default_rng(work_budget)
    for _ in range(6):
        edges, gt = random_case(rng)
        radius = rng.uniform(1.0, 4.0)
        expected = reference_counts(edges, gt, radius, SEISM_THRESHOLDS)
        counts = sweep_counts(edges, gt, radius, SEISM_THRESHOLDS, matching="maximum")
        np.testing.assert_array_equal(counts, expected)


def test_empty_maps():
    edges = np.zeros((10, 12))
    gt = np.zeros((10, 12), dtype=bool)
    gt[5, 2:9] = True
    counts = sweep_counts(edges, gt, 2.0, SEISM_THRESHOLDS)
    assert counts[NUM_GT].tolist() == [7] * 101 and not counts[[MATCHED_PRED, NUM_PRED, MATCHED_GT]].any()
    counts = sweep_counts(np.where(gt, 0.5, 0.0), np.zeros_like(gt), 2.0, SEISM_THRESHOLDS)
    assert counts[NUM_PRED, 0] == 7 and not counts[[MATCHED_PRED, MATCHED_GT, NUM_GT]].any()


def test_thresholds_must_increase():
    with pytest.raises(ValueError, match="strictly increasing"):
        sweep_counts(np.zeros((4, 4)), np.zeros((4, 4), bool), 1.0, np.array([0.5, 0.5]))
