"""Colour pictures of one image's predictions or targets: pure numpy, (H, W, 3) uint8 out.

The task entries of :mod:`tiger.tasks` choose one of these for their task; matplotlib is imported only by
:func:`depth_rgb`, on its first call, for its colour map.
"""

from __future__ import annotations

import numpy as np

from tiger.tasks.targets import IGNORE_INDEX

IGNORE_COLOUR = (255, 255, 255)


def palette(num_classes: int) -> np.ndarray:
    """The PASCAL VOC colour map: (num_classes, 3) uint8, class 0 black, then bit-interleaved colours."""
    colours = np.zeros((num_classes, 3), dtype=np.uint8)
    for index in range(num_classes):
        label, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((label >> 0) & 1) << shift
            g |= ((label >> 1) & 1) << shift
            b |= ((label >> 2) & 1) << shift
            label >>= 3
        colours[index] = (r, g, b)
    return colours


def classes_rgb(task_name: str, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Class map (H, W), integer below ``num_classes`` or 255 (ignore, white) -> VOC palette colours."""
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{task_name}: expected an integer class map (H, W), got {labels.dtype} {labels.shape}"
        )
    ignore = labels == IGNORE_INDEX
    bad = (labels < 0) | ((labels >= num_classes) & ~ignore)
    if bad.any():
        raise ValueError(
            f"{task_name}: labels must lie in [0, {num_classes}) or be {IGNORE_INDEX} (ignore), "
            f"found {np.unique(labels[bad])[:8].tolist()}"
        )
    rgb = palette(max(num_classes, 1))[np.where(ignore, 0, labels)]
    rgb[ignore] = IGNORE_COLOUR
    return rgb


def depth_rgb(
    task_name: str,
    depth: np.ndarray,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "magma",
) -> np.ndarray:
    """Metres (H, W) or (1, H, W) -> ``cmap((vmax - d) / (vmax - vmin))`` (near is bright); 0 / non-finite
    (invalid) black. vmin / vmax default to the 2nd / 98th percentiles of the valid depths."""
    import matplotlib

    if depth.ndim == 3 and depth.shape[0] == 1:
        depth = depth[0]
    if depth.ndim != 2:
        raise ValueError(f"{task_name}: expected metres (H, W) or (1, H, W), got shape {depth.shape}")
    depth = depth.astype(np.float64)
    valid = np.isfinite(depth) & (depth > 0)
    low, high = np.percentile(depth[valid], [2.0, 98.0]) if valid.any() else (0.0, 1.0)
    low = low if vmin is None else vmin
    high = high if vmax is None else vmax
    if high < low:
        raise ValueError(f"{task_name}: vmax ({high}) must not be below vmin ({low})")
    position = np.clip((high - np.where(valid, depth, high)) / max(high - low, 1e-12), 0.0, 1.0)
    rgb = (matplotlib.colormaps[cmap](position)[..., :3] * 255).round().astype(np.uint8)
    rgb[~valid] = 0
    return rgb


def normals_rgb(task_name: str, normals: np.ndarray) -> np.ndarray:
    """Unit vectors (H, W, 3) or (3, H, W) -> ``round((n + 1) / 2 * 255)``; all-zero (invalid) black."""
    if normals.ndim == 3 and normals.shape[-1] != 3 and normals.shape[0] == 3:
        normals = normals.transpose(1, 2, 0)
    if normals.ndim != 3 or normals.shape[-1] != 3:
        raise ValueError(
            f"{task_name}: expected unit vectors (H, W, 3) or (3, H, W), got shape {normals.shape}"
        )
    normals = normals.astype(np.float64)
    rgb = np.clip(np.round((normals + 1.0) / 2.0 * 255.0), 0, 255).astype(np.uint8)
    rgb[np.abs(normals).sum(-1) == 0] = 0
    return rgb


def probability_rgb(task_name: str, probability: np.ndarray) -> np.ndarray:
    """Probabilities (H, W) in [0, 1] (or the saved uint8 format, divided by 255) -> grey."""
    if probability.ndim != 2:
        raise ValueError(f"{task_name}: expected probabilities (H, W), got shape {probability.shape}")
    if probability.dtype == np.uint8:
        probability = probability / 255.0
    probability = probability.astype(np.float64)
    if not np.isfinite(probability).all() or probability.min() < 0 or probability.max() > 1:
        raise ValueError(
            f"{task_name}: expected probabilities in [0, 1], got range "
            f"[{np.nanmin(probability):.4g}, {np.nanmax(probability):.4g}]"
        )
    grey = np.round(probability * 255.0).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
