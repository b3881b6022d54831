"""Benchmark the boundary ODS-F (SEISM protocol, 101 thresholds) on synthetic NYUD-size maps.

    python scripts/bench_boundary.py [--n 654] [--size 425 560] [--workers 2] [--max-dist 0.011]
                                     [--matching both|bsds|maximum] [--seed 0]

Each synthetic image is a ground-truth boundary map (boundaries of smooth random regions) and a plausible
prediction: the same boundaries warped by a smooth displacement (mostly within the tolerance), with a
strength that fades to nothing in places (missed boundaries), plus weaker "texture" boundaries that are not
in the ground truth, blurred, with background noise, through a sigmoid, saved as uint8 like a PNG. The
maps are generated first (not timed); then ODS-F / OIS-F / AP over all of them are timed, for each matching
(``both``: ``maximum`` then ``bsds`` on the same maps, so their times compare).
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import time

import numpy as np
from scipy import ndimage as ndi

from tiger.metrics.boundary import evaluate_boundaries
from tiger.metrics.boundary_ops import seg2bmap


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """Values in [0, 1] varying over ``cell`` pixels."""
    coarse = rng.random((shape[0] // cell + 2, shape[1] // cell + 2))
    return ndi.zoom(coarse, cell, order=1)[: shape[0], : shape[1]]


def _regions(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    return np.stack([_smooth_field(rng, shape, cell) for _ in range(6)]).argmax(0)


def synthetic_pair(seed: int, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One (prediction uint8 (H, W), ground-truth boundary bool (H, W)) pair; ODS about 0.75-0.8."""
    rng = np.random.default_rng(seed)
    labels = _regions(rng, shape, 40)
    truth = seg2bmap(labels)
    rows, cols = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    shift = [ndi.gaussian_filter(rng.standard_normal(shape), 25) * 150 for _ in range(2)]
    warped = ndi.map_coordinates(labels, [rows + shift[0], cols + shift[1]], order=0, mode="nearest")
    detected = seg2bmap(warped) * np.clip(_smooth_field(rng, shape, 50) * 1.6 - 0.3, 0, 1)
    texture = seg2bmap(_regions(rng, shape, 22)) * np.clip(_smooth_field(rng, shape, 45) * 1.5 - 0.6, 0, 1)
    response = ndi.gaussian_filter(np.maximum(detected, 0.8 * texture), 1.5) * 3.0
    response += 0.08 * ndi.gaussian_filter(rng.random(shape), 1.0)
    probability = 1.0 / (1.0 + np.exp(-(7.0 * response - 4.0)))
    return np.floor(probability * 255).astype(np.uint8), truth


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the pool workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _pair(job: tuple[int, tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    return synthetic_pair(*job)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=654, help="number of images (NYUD val: 654)")
    parser.add_argument("--size", type=int, nargs=2, default=(425, 560), metavar=("H", "W"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-dist", type=float, default=0.011, help="NYUD 0.011, PASCAL 0.0075")
    parser.add_argument("--seed", type=int, default=0, help="first map's seed (and the bsds links' seed)")
    parser.add_argument("--matching", choices=("both", "bsds", "maximum"), default="both")
    args = parser.parse_args()

    shape = (args.size[0], args.size[1])
    start = time.perf_counter()
    with multiprocessing.get_context().Pool(max(args.workers, 1)) as pool:
        pairs = pool.map(_pair, [(args.seed + i, shape) for i in range(args.n)])
    print(
        f"generated {args.n} maps of {shape[0]}x{shape[1]} in {time.perf_counter() - start:.1f} s (not timed)"
    )

    for matching in ("maximum", "bsds") if args.matching == "both" else (args.matching,):
        cpu_before = _cpu_seconds()
        start = time.perf_counter()
        scores = evaluate_boundaries(
            pairs, args.max_dist, workers=args.workers, matching=matching, seed=args.seed
        )
        seconds = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu_before
        print(
            f"[{matching}] ODS-F over {args.n} images x 101 thresholds with {args.workers} worker(s): "
            f"{seconds:.1f} s total, {seconds / args.n:.3f} s per image"
        )
        # CPU time does not depend on what else the machine runs: CPU / workers is the wall time on idle
        # cores
        print(
            f"[{matching}] CPU time {cpu:.1f} s ({cpu / args.n:.3f} s per image), / {args.workers} "
            f"worker(s): {cpu / max(args.workers, 1):.1f} s"
        )
        print(
            f"[{matching}] ODS-F {scores['odsF']:.3f} (t = {scores['ods_threshold']:.3f}, "
            f"P {scores['ods_precision']:.2f}, R {scores['ods_recall']:.2f})  OIS-F {scores['oisF']:.3f}  "
            f"AP {scores['AP']:.3f}"
        )


if __name__ == "__main__":
    main()
