"""Time a training step with and without the counterfactual loss; count trainable and frozen parameters.

    python scripts/bench_step.py                                   # tiny, TIGER-B and TIGER-L
    python scripts/bench_step.py --configs tiger_l --grid 8 10 --batch 2

Real-size configurations use the experiment configs (nyud_tiger_b / nyud_tiger_l) with random expert weights
(``weights=null``), so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from tiger.build import build_tiger, plain_config
from tiger.losses import TigerLoss

CONF = Path(__file__).resolve().parents[1] / "conf"
OVERRIDES = {
    "tiny": [],
    "tiger_b": ["experiment=nyud_tiger_b"],
    "tiger_l": ["experiment=nyud_tiger_l"],
}


def net_config(name: str, grid: list[int]) -> dict:
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=OVERRIDES[name])
    net = plain_config(cfg.model.net) if name == "tiny" else None
    if net is None:
        net = plain_config({k: v for k, v in cfg.model.net.items() if k != "experts"})
        net["experts"] = {role: {**spec, "weights": None} for role, spec in plain_config(cfg.experts).items()}
    net["grid"] = grid
    return net


def synthetic_batch(net, batch: int, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    h, w = size
    targets = {}
    for task in net.tasks:
        if task.is_classification:
            targets[task.name] = torch.randint(0, task.channels, (batch, h, w))
        elif task.name == "sal":
            targets[task.name] = torch.randint(0, 2, (batch, h, w))
        elif task.name == "edge":
            targets[task.name] = (torch.rand(batch, h, w) > 0.9).float()
        elif task.name == "normals":
            targets[task.name] = torch.nn.functional.normalize(torch.randn(batch, 3, h, w), dim=1)
        else:
            targets[task.name] = torch.rand(batch, 1, h, w) * 5 + 0.5
    return targets


def time_step(net, criterion, images, targets, steps: int) -> float:
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        output = net(images)
        loss = criterion(net, output, targets)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if images.is_cuda:
            torch.cuda.synchronize()
        if step > 0:  # the first step warms up
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--configs", nargs="+", default=["tiny", "tiger_b", "tiger_l"], choices=list(OVERRIDES)
    )
    parser.add_argument("--grid", nargs=2, type=int, default=[4, 5], help="token grid H W (real sizes)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--lambda-cf", type=float, default=0.1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)

    rows = []
    for name in args.configs:
        grid = [4, 5] if name == "tiny" else args.grid
        net = build_tiger(**net_config(name, grid)).to(args.device)
        size = (grid[0] * 16, grid[1] * 16)
        images = torch.rand(args.batch, 3, *size, device=args.device)
        targets = {k: v.to(args.device) for k, v in synthetic_batch(net, args.batch, size).items()}
        trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in net.experts.parameters())
        plain = time_step(net, TigerLoss(net.tasks, lambda_cf=0.0), images, targets, args.steps)
        with_cf = time_step(net, TigerLoss(net.tasks, lambda_cf=args.lambda_cf), images, targets, args.steps)
        rows.append((name, len(net.experts), grid, trainable, frozen, plain, with_cf))
        del net

    print(f"\ndevice={args.device} batch={args.batch} median of {args.steps} steps (after one warm-up step)")
    print(
        f"{'config':8} {'M':>2} {'grid':>7} {'trainable':>11} {'frozen':>11} "
        f"{'step s':>8} {'+cf s':>8} {'cf cost':>8}"
    )
    for name, m, grid, trainable, frozen, plain, with_cf in rows:
        print(
            f"{name:8} {m:2d} {grid[0]:>3}x{grid[1]:<3} {trainable / 1e6:10.2f}M {frozen / 1e6:10.2f}M "
            f"{plain:8.3f} {with_cf:8.3f} {100 * (with_cf / plain - 1):7.1f}%"
        )


if __name__ == "__main__":
    main()
