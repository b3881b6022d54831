"""matching="bsds": the correspondPixels graph, transcribed rule by rule and solved from scratch (scipy's
LAPJVsp), against the fast path of the sweep; hand-made graphs and maps where the sparse outlier graph
denies a maximum matching."""

import math

import numpy as np
import pytest
import torch
from skimage.morphology import thin as skimage_thin

import tiger.metrics.boundary_bsds as bsds
from tiger.metrics import BoundaryF
from tiger.metrics.boundary_bsds import (
    OUTLIER,
    OVERLAY,
    REAL,
    lexicographic_count,
    min_cost_count,
    random_subsets,
)
from tiger.metrics.boundary_matching import (
    MATCHED_GT,
    MATCHED_PRED,
    NUM_PRED,
    SEISM_THRESHOLDS,
    image_boundary_counts,
    sweep_counts,
)

from .test_boundary_matching import random_case


def transcribed_match(pred: np.ndarray, gt: np.ndarray, radius: float, rng: np.random.Generator) -> int:
    """match.cc's matchEdgeMaps, loop for loop (our random subsets in its order), solved from scratch."""
    height, width = pred.shape
    reach = math.ceil(radius)
    window = [(v, u) for v in range(-reach, reach + 1) for u in range(-reach, reach + 1)]
    matchable1 = np.zeros_like(pred, dtype=bool)
    matchable2 = np.zeros_like(gt, dtype=bool)
    for y1 in range(height):
        for x1 in range(width):
            if not pred[y1, x1]:
                continue
            for v, u in window:
                y2, x2 = y1 + v, x1 + u
                if u * u + v * v > radius * radius or not (0 <= x2 < width and 0 <= y2 < height):
                    continue
                if gt[y2, x2]:
                    matchable1[y1, x1] = matchable2[y2, x2] = True
    # node ids in column-major order (x outer, y inner)
    node1, node2 = {}, {}
    for x in range(width):
        for y in range(height):
            if matchable1[y, x]:
                node1[y, x] = len(node1)
            if matchable2[y, x]:
                node2[y, x] = len(node2)
    n1, n2 = len(node1), len(node2)
    ow = math.ceil(100 * radius * 100)  # outlierCost = 100 * maxDist, times the multiplier
    links = []
    for (y1, x1), i in node1.items():
        for v, u in window:
            y2, x2 = y1 + v, x1 + u
            if u * u + v * v <= radius * radius and (y2, x2) in node2:
                links.append((i, node2[y2, x2], round(math.sqrt(u * u + v * v) * 100)))
    d1, d2, d3 = max(0, min(6, n1 - 1)), max(0, min(6, n2 - 1)), min(6, n1, n2)
    outliers = random_subsets(rng, n1, d1, n1 - 1) if n1 else np.zeros((0, 0), int)
    for i in range(n1):
        for j in outliers[i]:
            links.append((i, n2 + (j + 1 if j >= i else j), ow))
    outliers = random_subsets(rng, n2, d2, n2 - 1) if n2 else np.zeros((0, 0), int)
    for j in range(n2):
        for i in outliers[j]:
            links.append((n1 + (i + 1 if i >= j else i), j, ow))
    outliers = random_subsets(rng, max(n1, n2), d3, min(n1, n2))
    for i in range(max(n1, n2)):  # i: an outlier of the larger side, j: one of the smaller side
        for j in outliers[i]:
            links.append((n1 + i, n2 + j, ow) if n1 < n2 else (n1 + j, n2 + i, ow))
    links += [(i, n2 + i, ow * 100) for i in range(n1)] + [(n1 + j, j, ow * 100) for j in range(n2)]
    if not links:
        return 0
    left, right, cost = (np.array(column, dtype=np.int64) for column in zip(*links, strict=True))
    return min_cost_count(n1, n2, left, right, cost)[0]


def transcribed_counts(edges: np.ndarray, gt: np.ndarray, radius: float, seed: int) -> np.ndarray:
    """(matched, predicted) at every SEISM threshold, the thinning by skimage."""
    counts = np.zeros((2, len(SEISM_THRESHOLDS)), dtype=np.int64)
    for i, t in enumerate(SEISM_THRESHOLDS):
        pred = skimage_thin(edges > t)
        counts[:, i] = transcribed_match(pred, gt, radius, np.random.default_rng([seed, i])), pred.sum()
    return counts


@pytest.mark.parametrize("exact_nodes", [0, 400])  # 0: the fast (lexicographic) solve everywhere
def test_counts_equal_the_transcribed_reference_solved_from_scratch(monkeypatch, exact_nodes):
    monkeypatch.setattr(bsds, "EXACT_NODES", exact_nodes)
    rng = np.random.default_rng(17 + exact_nodes)
    for case in range(2):
        edges, gt = random_case(rng)
        radius = rng.uniform(1.5, 4.0)
        expected = transcribed_counts(edges, gt, radius, seed=case)
        counts = sweep_counts(edges, gt, radius, SEISM_THRESHOLDS, matching="bsds", seed=case)
        np.testing.assert_array_equal(counts[[MATCHED_PRED, NUM_PRED]], expected)
        np.testing.assert_array_equal(counts[MATCHED_GT], counts[MATCHED_PRED])


def maximum_counts(edges: np.ndarray, gt: np.ndarray, radius: float) -> np.ndarray:
    return sweep_counts(edges, gt, radius, SEISM_THRESHOLDS, matching="maximum")[MATCHED_PRED]


def ring_graph(denied: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """8 prediction and 8 ground-truth nodes, real links i -- i only (a maximum matching of 8); each
    node's 6 outlier links go to the next 6 indices (mod 8). Each right outlier n2 + i links to 6 left
    outliers; when ``denied`` none of them is the left outlier n1 + 0, which can then only be matched by
    a ground-truth node that links to it (all 8 are matched) or its own overlay (ground truth 0)."""
    n = 8
    real = [(i, i, REAL) for i in range(n)]
    p_links = [(i, n + (i + k) % n, OUTLIER) for i in range(n) for k in range(1, 7)]
    g_links = [(n + (j + k) % n, j, OUTLIER) for j in range(n) for k in range(1, 7)]
    first = 1 if denied else 0
    oo = [(n + (first + (i + k) % (n - first)), n + i, OUTLIER) for i in range(n) for k in range(6)]
    overlay = [(i, n + i, OVERLAY) for i in range(n)] + [(n + j, j, OVERLAY) for j in range(n)]
    links = real + p_links + g_links + oo + overlay
    left, right, kind = (np.array(column, dtype=np.int64) for column in zip(*links, strict=True))
    return left, right, kind


@pytest.mark.parametrize("denied", [False, True])
def test_a_hand_made_outlier_graph_denies_the_maximum_matching(denied):
    left, right, kind = ring_graph(denied)
    outlier_outlier = (left >= 8) & (right >= 8) & (kind == OUTLIER)
    assert (outlier_outlier & (left == 8)).any() != denied  # denied: left outlier n1 + 0 has none
    expected = 7 if denied else 8
    identity = np.arange(8)
    assert lexicographic_count(8, 8, left, right, kind, identity) == expected
    cost = np.where(kind == REAL, 0, np.where(kind == OVERLAY, 10_000, 100))
    assert min_cost_count(8, 8, left, right, cost) == (expected, 100 * (16 - expected))


def test_a_hand_made_map_where_a_pair_is_given_up():
    """A 32-pixel boundary predicted exactly (radius 1.5): a maximum matching pairs all 32 at every
    threshold below 0.5. With seed 1, threshold 0.36 (index 36) draws outlier links in which one left
    outlier has no outlier-outlier link, so one pair is given up there, and only there."""
    gt = np.zeros((12, 40), dtype=bool)
    gt[6, 4:36] = True
    edges = np.where(gt, 0.5, 0.0)
    counts = sweep_counts(edges, gt, 1.5, SEISM_THRESHOLDS, matching="bsds", seed=1)
    expected = np.where(SEISM_THRESHOLDS < 0.5, 32, 0)
    expected[36] = 31
    np.testing.assert_array_equal(counts[MATCHED_PRED], expected)
    np.testing.assert_array_equal(maximum_counts(edges, gt, 1.5), np.where(SEISM_THRESHOLDS < 0.5, 32, 0))
    # the cause: the draw of threshold 36 (prediction links, ground-truth links, then outlier-outlier)
    rng = np.random.default_rng([1, 36])
    random_subsets(rng, 32, 6, 31), random_subsets(rng, 32, 6, 31)
    picked = random_subsets(rng, 32, 6, 32)  # n1 == n2: each right outlier picks 6 left outliers
    assert len(np.setdiff1d(np.arange(32), picked)) == 1
    np.testing.assert_array_equal(transcribed_counts(edges, gt, 1.5, seed=1)[0], expected)


def test_seeds_spread_by_a_few_pixels_below_the_maximum():
    rng = np.random.default_rng(5)
    edges, gt = random_case(rng)
    maximum = maximum_counts(edges, gt, 3.0)
    runs = np.stack(
        [sweep_counts(edges, gt, 3.0, SEISM_THRESHOLDS, seed=seed)[MATCHED_PRED] for seed in range(4)]
    )
    assert (runs <= maximum).all() and (runs < maximum).any()
    assert (maximum - runs).max() <= 3 and (runs.max(0) - runs.min(0)).max() <= 2
    assert not (runs == runs[0]).all()  # the seed matters
    again = sweep_counts(edges, gt, 3.0, SEISM_THRESHOLDS, seed=1)[MATCHED_PRED]
    np.testing.assert_array_equal(runs[1], again)  # reproducible


def test_random_subsets_are_distinct_and_uniform():
    rng = np.random.default_rng(0)
    for n in (8, 1000):  # a permutation's prefix, and draws with rejection
        subsets = random_subsets(rng, 20_000, 6, n)
        assert subsets.min() >= 0 and subsets.max() < n
        assert (np.diff(np.sort(subsets, axis=1), axis=1) > 0).all()
        frequency = np.bincount(subsets.ravel(), minlength=n) / subsets.size
        assert np.abs(frequency - 1 / n).max() < 5 * np.sqrt(1 / (n * subsets.size)) + 1e-3
    with pytest.raises(ValueError, match="6 distinct values from 5"):
        random_subsets(rng, 1, 6, 5)


def test_the_matching_option_is_checked():
    for call in (
        lambda: BoundaryF(0.011, matching="hungarian"),
        lambda: image_boundary_counts(np.zeros((8, 8)), np.zeros((8, 8), bool), 0.011, matching="csa"),
    ):
        with pytest.raises(ValueError, match="matching must be one of 'bsds', 'maximum'"):
            call()


def test_bsds_is_the_default_and_maximum_stays_an_option():
    prediction, target = torch.zeros(40, 40), torch.zeros(40, 40)
    target[8:32, 20] = prediction[8:32, 20] = 1.0
    assert BoundaryF().matching == "bsds"
    for matching in ("bsds", "maximum"):
        metric = BoundaryF(0.05, matching=matching)
        metric.update(prediction[None], target[None])
        assert metric.compute()["odsF"].item() == pytest.approx(100.0)
