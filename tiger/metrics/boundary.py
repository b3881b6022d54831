"""Boundary ODS-F / OIS-F / AP of the SEISM protocol (PROTOCOL.md section 4): scores and a streaming Metric.

Per image, :func:`~tiger.metrics.boundary_matching.image_boundary_counts` gives four counts at each of the
101 thresholds; they are summed over the data set, never averaged per image:

* ODS-F: F = 2PR / (P + R) of the pooled counts at each threshold, the best threshold for the data set.
* OIS-F: each image's counts at its own best threshold (the first maximum of its F), pooled, then F
  (the BSDS definition).
* AP: the area under the pooled precision-recall curve as the BSDS benchmark computes it: precision
  linearly interpolated at recall 0, 0.01, ..., 1 between the measured (recall, precision) points
  (0 outside the measured recall range), summed x 0.01.

All three are reported x100. A saved-prediction folder is scored with :func:`evaluate_boundaries`, or
with :class:`BoundaryF` fed one image at a time; both can use a process pool.

The matching (option ``matching``, everywhere in this module):

* ``"bsds"`` (default): the assignment of the reference matcher, BSDS ``correspondPixels`` as SEISM calls
  it: a min-cost perfect assignment on a graph whose links to "unmatched" outlier nodes are a sparse random
  graph (6 per pixel), which can deny a maximum matching (a few pixels per 10,000 fewer matches). The
  random links are drawn with ``numpy.random.default_rng([seed, threshold index])`` (option ``seed``), so
  scores are reproducible; the reference seeds them from the clock. See
  :mod:`~tiger.metrics.boundary_bsds`.
* ``"maximum"``: an exact maximum-cardinality matching within the radius (about 10x faster; its counts
  are >= the reference's, so its ODS-F is slightly higher).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from tiger.metrics.boundary_bsds import check_matching
from tiger.metrics.boundary_matching import (
    MATCHED_GT,
    MATCHED_PRED,
    NUM_GT,
    NUM_PRED,
    SEISM_THRESHOLDS,
    image_boundary_counts,
    seism_thresholds,
)
from tiger.tasks.targets import IGNORE_INDEX

# Matching tolerance, as a fraction of the image diagonal, per data set.
BOUNDARY_MAX_DIST = {"nyud": 0.011, "pascal": 0.0075, "synthetic": 0.011}


def precision_recall_f(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(4, ...) counts -> precision, recall, F = 2PR / (P + R); 0 where a denominator is 0 (as BSDS)."""
    counts = np.asarray(counts, dtype=np.float64)
    precision = counts[MATCHED_PRED] / np.where(counts[NUM_PRED] > 0, counts[NUM_PRED], 1.0)
    recall = counts[MATCHED_GT] / np.where(counts[NUM_GT] > 0, counts[NUM_GT], 1.0)
    total = precision + recall
    return precision, recall, 2 * precision * recall / np.where(total > 0, total, 1.0)


def best_threshold_counts(counts: np.ndarray) -> np.ndarray:
    """(4, T) counts of one image -> (4,) counts at its best threshold (first maximum of F), for OIS."""
    return counts[:, int(np.argmax(precision_recall_f(counts)[2]))]


def average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """BSDS area under the PR curve: precision interpolated at recall 0:0.01:1 (0 outside), x 0.01."""
    unique_recall, first = np.unique(recall, return_index=True)
    if len(unique_recall) < 2:
        return 0.0
    grid = np.linspace(0.0, 1.0, 101)
    return float(np.interp(grid, unique_recall, precision[first], left=0.0, right=0.0).sum() * 0.01)


def boundary_scores(
    counts: np.ndarray, best_counts: np.ndarray, thresholds: np.ndarray = SEISM_THRESHOLDS
) -> dict[str, float]:
    """Scores from the pooled counts.

    Args:
        counts: (4, T) per-threshold counts summed over images.
        best_counts: (4,) per-image best-threshold counts summed over images.

    Returns:
        odsF, oisF, AP (x100), and ods_threshold, ods_precision, ods_recall (x100) at the ODS threshold.
    """
    precision, recall, f = precision_recall_f(counts)
    best = int(np.argmax(f))
    return {
        "odsF": 100.0 * float(f[best]),
        "oisF": 100.0 * float(precision_recall_f(best_counts)[2]),
        "AP": 100.0 * average_precision(precision, recall),
        "ods_threshold": float(thresholds[best]),
        "ods_precision": 100.0 * float(precision[best]),
        "ods_recall": 100.0 * float(recall[best]),
    }


def crop_to_valid(prob: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Un-pad one image: crop both maps to the bounding box of the target's non-255 pixels.

    Args:
        prob: (H, W) boundary probability.
        target: (H, W) {0, 1} boundary map, 255 = padding.

    Returns:
        The cropped (prob, target as bool).
    """
    if prob.shape != target.shape or prob.ndim != 2:
        raise ValueError(
            f"boundary prediction {prob.shape} and target {target.shape} must be (H, W) of one shape"
        )
    valid = target != IGNORE_INDEX
    rows, cols = np.flatnonzero(valid.any(1)), np.flatnonzero(valid.any(0))
    if rows.size == 0:
        raise ValueError("boundary target has no valid pixel: every pixel is 255 (padding)")
    box = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
    target = target[box]
    if (target == IGNORE_INDEX).any():
        raise ValueError(
            "boundary target has 255 (ignore) pixels inside its valid region; only padding around a "
            "rectangular image can be ignored"
        )
    if not np.isin(target, (0, 1)).all():
        raise ValueError(f"boundary target must be in {{0, 1, 255}}, got values {np.unique(target)[:10]}")
    return prob[box], target == 1


_Job = tuple[np.ndarray, np.ndarray, float, np.ndarray, bool, str, int]


def _image_counts(job: _Job) -> np.ndarray:
    prob, target, max_dist, thresholds, crop, matching, seed = job
    if crop:
        prob, target = crop_to_valid(prob, target)
    return image_boundary_counts(prob, target, max_dist, thresholds, matching=matching, seed=seed)


def boundary_counts_many(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]],
    max_dist: float,
    thresholds: np.ndarray = SEISM_THRESHOLDS,
    workers: int = 1,
    crop: bool = True,
    *,
    matching: str = "bsds",
    seed: int = 0,
) -> Iterator[np.ndarray]:
    """The (4, T) counts of each (prediction, target) pair, in order, on ``workers`` processes.

    Args:
        pairs: (H, W) probability (float in [0, 1] or the uint8 PNG) and (H, W) target, {0, 1}, 255 =
            padding (cropped away when ``crop``). Consumed lazily, so a folder can be read as it goes.
        matching: ``"bsds"`` or ``"maximum"`` (module docstring); seed: of the ``"bsds"`` random links.
    """
    check_matching(matching)
    jobs = ((prob, target, max_dist, thresholds, crop, matching, seed) for prob, target in pairs)
    if workers <= 1:
        yield from map(_image_counts, jobs)
        return
    with multiprocessing.get_context().Pool(workers) as pool:
        yield from pool.imap(_image_counts, jobs, chunksize=1)


def evaluate_boundaries(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]],
    max_dist: float,
    thresholds: np.ndarray = SEISM_THRESHOLDS,
    workers: int = 2,
    *,
    matching: str = "bsds",
    seed: int = 0,
) -> dict[str, float]:
    """ODS-F, OIS-F and AP of a whole data set of (prediction, target) pairs (see :func:`boundary_scores`);
    ``matching`` and ``seed`` as in the module docstring."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    counts = np.zeros((4, len(thresholds)), dtype=np.int64)
    best = np.zeros(4, dtype=np.int64)
    images = 0
    counts_many = boundary_counts_many(pairs, max_dist, thresholds, workers, matching=matching, seed=seed)
    for image_counts in counts_many:
        counts += image_counts
        best += best_threshold_counts(image_counts)
        images += 1
    if images == 0:
        raise ValueError("no images to evaluate")
    return boundary_scores(counts, best, thresholds)


class BoundaryF(Metric):
    """Boundary ODS-F, OIS-F and AP (x100) of the SEISM protocol, streaming and DDP-correct.

    ``update(prediction, target)``: prediction (B, H, W) or (H, W) probability in [0, 1] (e.g.
    ``Task.postprocess`` output, or a saved uint8 PNG / 255); target the same shape, {0, 1} boundary map
    with 255 = padding. Each image is cropped to the bounding box of its valid target pixels before NMS
    (un-padding); its counts are computed at once, so the states are plain sums (counts per threshold,
    counts at each image's best threshold, number of images) that torchmetrics adds across processes.

    Args:
        max_dist: matching tolerance as a fraction of the image diagonal (NYUD 0.011, PASCAL 0.0075).
        num_thresholds: 101 gives the protocol's thresholds; other values k / (n + 1), k = 1..n (BSDS).
        workers: processes used for a batch of several images.
        matching: ``"bsds"`` (default: the reference ``correspondPixels`` assignment) or ``"maximum"`` (a
            maximum-cardinality matching, faster, ODS-F slightly higher); see the module docstring.
        seed: the seed of the ``"bsds"`` random outlier links (each image's threshold ``i`` draws from
            ``numpy.random.default_rng([seed, i])``).
    """

    full_state_update = False

    def __init__(
        self,
        max_dist: float = 0.011,
        num_thresholds: int = 101,
        workers: int = 1,
        matching: str = "bsds",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if max_dist <= 0:
            raise ValueError(f"max_dist must be > 0 (a fraction of the image diagonal), got {max_dist}")
        self.matching = check_matching(matching)
        self.seed = int(seed)
        self.max_dist = float(max_dist)
        self.thresholds = seism_thresholds(num_thresholds)
        self.workers = int(workers)
        self.add_state(
            "counts", torch.zeros(4, len(self.thresholds), dtype=torch.int64), dist_reduce_fx="sum"
        )
        self.add_state("best_counts", torch.zeros(4, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("num_images", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, prediction: Tensor, target: Tensor) -> None:
        if prediction.shape != target.shape or prediction.ndim not in (2, 3):
            raise ValueError(
                f"boundary prediction {tuple(prediction.shape)} and target {tuple(target.shape)} must both "
                "be (B, H, W) or (H, W)"
            )
        if prediction.ndim == 2:
            prediction, target = prediction[None], target[None]
        probs = prediction.detach().float().cpu().numpy()
        targets = target.detach().cpu().numpy()
        pairs = list(zip(probs, targets, strict=True))
        workers = min(self.workers, len(pairs))
        counts = boundary_counts_many(
            pairs, self.max_dist, self.thresholds, workers, matching=self.matching, seed=self.seed
        )
        self.update_counts(np.stack(list(counts)))

    def update_counts(self, counts: np.ndarray) -> None:
        """Add precomputed per-image counts, (N, 4, T) or (4, T), from :func:`boundary_counts_many`."""
        counts = np.asarray(counts, dtype=np.int64)
        if counts.ndim == 2:
            counts = counts[None]
        if counts.shape[1:] != (4, len(self.thresholds)):
            raise ValueError(f"expected per-image counts (N, 4, {len(self.thresholds)}), got {counts.shape}")
        best = np.stack([best_threshold_counts(image) for image in counts])
        self.counts += torch.from_numpy(counts.sum(0)).to(self.counts.device)
        self.best_counts += torch.from_numpy(best.sum(0)).to(self.best_counts.device)
        self.num_images += len(counts)

    def compute(self) -> dict[str, Tensor]:
        if int(self.num_images) == 0:
            raise RuntimeError("BoundaryF.compute() before any update")
        scores = boundary_scores(self.counts.cpu().numpy(), self.best_counts.cpu().numpy(), self.thresholds)
        return {key: torch.tensor(value, dtype=torch.float64) for key, value in scores.items()}
