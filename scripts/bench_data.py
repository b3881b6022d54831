"""Data-layer throughput: synthetic scenes per second, and NYUD training samples per second.

    python scripts/bench_data.py                      # defaults below
    python scripts/bench_data.py --seconds 5 --nyud-images 16 --workers 0 2

(a) ``generate_scene`` at 64x80 and 448x576 on one core (the number of scenes rendered in
``--seconds``). (b) The NYUD reader with the full training augmentation (scale, cat-max-ratio crop to
448x576, flip, photometric distortion, pad) over a miniature NYUD_MT tree of NYUD size (425x560,
``.jpg`` / ``.npy``) written by the generator into a temporary folder, through a DataLoader with
batch size 8 and each ``--workers`` setting.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from tiger.data import NYUDv2, TrainTransform
from tiger.data.synthetic import generate_scene, write_nyud_tree


def scenes_per_second(size: tuple[int, int], seconds: float) -> float:
    generate_scene(0, 0, size)  # warm-up
    start, count = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        generate_scene(0, count, size)
        count += 1
    return count / (time.perf_counter() - start)


def loader_samples_per_second(root: Path, workers: int, seconds: float, batch_size: int = 8) -> float:
    dataset = NYUDv2(
        root, "train", ["semseg", "depth", "normals", "edge"], TrainTransform((448, 576), seed=0)
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, persistent_workers=workers > 0
    )
    iterator = iter(loader)
    next(iterator)  # start the workers
    start, count = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            continue
        count += batch["image"].shape[0]
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="timing window per row")
    parser.add_argument("--nyud-images", type=int, default=16, help="train images of the miniature tree")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for size in ((64, 80), (448, 576)):
        rows.append(
            (
                f"synthetic scenes {size[0]}x{size[1]} (1 core)",
                scenes_per_second(size, args.seconds),
                "scenes/s",
            )
        )
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        tree = write_nyud_tree(
            Path(folder) / "NYUD_MT", args.nyud_images, 1, (425, 560), seed=0, packaging="atrc"
        )
        write_time = time.perf_counter() - start
        for workers in args.workers:
            rate = loader_samples_per_second(tree.root, workers, args.seconds)
            rows.append((f"NYUD 425x560 -> train aug 448x576, workers={workers}", rate, "samples/s"))
    images = args.nyud_images + 1
    print(f"\ncpus: {os.cpu_count()}, torch threads: 1; NYUD tree of {images} images: {write_time:.1f} s")
    width = max(len(name) for name, _, _ in rows)
    print(f"{'benchmark':<{width}}  {'rate':>8}  unit")
    for name, rate, unit in rows:
        print(f"{name:<{width}}  {rate:8.1f}  {unit}")


if __name__ == "__main__":
    main()
