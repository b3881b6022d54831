"""Time a training step with and without the counterfactual loss; count trainable and frozen parameters.

    python scripts/bench_step.py                                   # tiny, TIGER-B and TIGER-L
    python scripts/bench_step.py --configs tiger_l --grid 8 10 --batch 2
    python scripts/bench_step.py --configs tiger_l --grid 32 40 --image-size 448 576 --batch 1 --steps 1
    python scripts/bench_step.py --configs tiger_l --grid 32 40 --image-size 448 576 --batch 8 \
        --precision bf16-mixed --device cuda                       # the GPU figure (peak memory too)

Real-size configurations use the experiment configs (nyud_tiger_b / nyud_tiger_l) with random expert weights
(``weights=null``), so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from tiger.model import TigerConfig
from tiger.model.build import build_tiger
from tiger.training.balancing import FixedWeights
from tiger.training.losses import LossConfig, TigerLoss

CONF = Path(__file__).resolve().parents[1] / "conf"
OVERRIDES = {
    "tiny": [],
    "tiger_b": ["experiment=nyud_tiger_b"],
    "tiger_l": ["experiment=nyud_tiger_l"],
}


def net_config(name: str, grid: list[int]) -> TigerConfig:
    """The experiment's model config on ``grid``; real-size experts at random weights (nothing downloaded)."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=OVERRIDES[name])
    net = OmegaConf.to_container(cfg.model.net, resolve=True)
    net = {key: value for key, value in net.items() if key not in ("_target_", "_recursive_")}
    if name != "tiny":
        net["experts"] = {role: {**spec, "weights": None} for role, spec in net["experts"].items()}
    net["grid"] = grid
    return TigerConfig(**net)


class Objective:
    """Eq. 14 as training forms it: the terms of :class:`TigerLoss`, totalled by the balancer."""

    def __init__(self, net, lambda_cf: float) -> None:
        self.criterion = TigerLoss(net.tasks, LossConfig(lambda_cf=lambda_cf))
        self.balancer = FixedWeights(net.tasks, lambda_cf=lambda_cf)

    def uses_counterfactual(self, num_experts: int) -> bool:
        return self.criterion.uses_counterfactual(num_experts)

    def __call__(self, output, targets, counterfactual):
        return self.balancer(self.criterion(output, targets, counterfactual))


def synthetic_batch(net, batch: int, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """A random valid target per task (the task entries' :meth:`~tiger.tasks.Task.random_target`)."""
    return {task.name: task.random_target(batch, size) for task in net.tasks}


def train_step(net, criterion: Objective, optimizer, images, targets, bf16: bool = False) -> None:
    """One training step: forward, loss (eq. 14), backward, AdamW; ``bf16``: forward and loss under bf16
    autocast (Lightning's ``bf16-mixed``)."""
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
        output = net(images)
        uses = criterion.uses_counterfactual(len(net.experts))
        counterfactual = net.counterfactual(output) if uses else None
        loss = criterion(output, targets, counterfactual)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def time_steps(
    net, criteria: dict[str, Objective], images, targets, steps: int, bf16: bool = False
) -> dict[str, float]:
    """Median seconds of a training step under each criterion.

    The criteria alternate step by step, so a change in the machine's load hits all of them alike.
    """
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    times: dict[str, list[float]] = {name: [] for name in criteria}
    for step in range(steps + 1):
        for name, criterion in criteria.items():
            start = time.perf_counter()
            train_step(net, criterion, optimizer, images, targets, bf16)
            if images.is_cuda:
                torch.cuda.synchronize()
            if step > 0:  # the first step warms up
                times[name].append(time.perf_counter() - start)
    return {name: float(np.median(values)) for name, values in times.items()}


def peak_memory(net, criterion: Objective, images, targets, bf16: bool = False) -> int | None:
    """Peak CUDA memory (bytes) of one training step, or None on the CPU."""
    if not images.is_cuda:
        return None
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    train_step(net, criterion, optimizer, images, targets, bf16)
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated())


def count_flops(net, criterion: Objective, images, targets) -> int:
    """FLOPs of one training step (matrix products, convolutions, attention; forward and backward), as
    counted by ``torch.utils.flop_counter``: a figure that does not depend on the machine's load."""
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.0)
    with FlopCounterMode(display=False) as counter:
        train_step(net, criterion, optimizer, images, targets)
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--configs", nargs="+", default=["tiny", "tiger_b", "tiger_l"], choices=list(OVERRIDES)
    )
    parser.add_argument("--grid", nargs=2, type=int, default=[4, 5], help="token grid H W (real sizes)")
    parser.add_argument(
        "--image-size", nargs=2, type=int, default=None, help="input H W (default: 16 x the grid)"
    )
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--lambda-cf", type=float, default=0.1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["32-true", "bf16-mixed"], default="32-true")
    parser.add_argument("--json", type=Path, help="also write the exact figures (FLOP counts, seconds) here")
    args = parser.parse_args()
    torch.manual_seed(0)

    rows = []
    for name in args.configs:
        grid = [4, 5] if name == "tiny" else args.grid
        net = build_tiger(net_config(name, grid)).to(args.device)
        size = tuple(args.image_size) if args.image_size else (grid[0] * 16, grid[1] * 16)
        images = torch.rand(args.batch, 3, *size, device=args.device)
        targets = {k: v.to(args.device) for k, v in synthetic_batch(net, args.batch, size).items()}
        trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in net.experts.parameters())
        criteria = {
            "plain": Objective(net, lambda_cf=0.0),
            "cf": Objective(net, lambda_cf=args.lambda_cf),
        }
        bf16 = args.precision == "bf16-mixed"
        medians = time_steps(net, criteria, images, targets, args.steps, bf16)
        memory = [peak_memory(net, criteria[key], images, targets, bf16) for key in ("plain", "cf")]
        flops = {key: count_flops(net, criterion, images, targets) for key, criterion in criteria.items()}
        times = (medians["plain"], medians["cf"])
        rows.append(
            (
                name,
                len(net.experts),
                grid,
                size,
                trainable,
                frozen,
                times,
                (flops["plain"], flops["cf"]),
                memory,
            )
        )
        del net

    print(
        f"\ndevice={args.device} precision={args.precision} batch={args.batch} median of {args.steps} steps "
        "each, with and without L_cf alternating (after one warm-up step each)"
    )
    print(
        f"{'config':8} {'M':>2} {'grid':>7} {'image':>9} {'trainable':>11} {'frozen':>11} "
        f"{'step s':>8} {'+cf s':>8} {'cf time':>8} {'GFLOP':>9} {'+cf GFLOP':>10} {'cf FLOPs':>9} "
        "peak GiB (plain, +cf)"
    )
    for name, m, grid, size, trainable, frozen, (plain, with_cf), (flops, flops_cf), memory in rows:
        peak = " ".join(f"{value / 2**30:6.2f}" if value is not None else "     -" for value in memory)
        print(
            f"{name:8} {m:2d} {grid[0]:>3}x{grid[1]:<3} {size[0]:>4}x{size[1]:<4} "
            f"{trainable / 1e6:10.2f}M {frozen / 1e6:10.2f}M "
            f"{plain:8.3f} {with_cf:8.3f} {100 * (with_cf / plain - 1):7.1f}% "
            f"{flops / 1e9:9.2f} {flops_cf / 1e9:10.2f} {100 * (flops_cf / flops - 1):8.1f}% {peak}"
        )
    if args.json:
        fields = (
            "config",
            "experts",
            "grid",
            "image",
            "trainable",
            "frozen",
            "seconds",
            "flops",
            "peak_bytes",
        )
        args.json.write_text(json.dumps([dict(zip(fields, row, strict=True)) for row in rows], indent=2))


if __name__ == "__main__":
    main()
