"""Routing statistics: usage, agreement with the counterfactual target, and exact Shapley credit (checked
against a brute force over orderings, efficiency, the null player and symmetry)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import tiger.analysis.routing as routing
from tiger.analysis.figures import plot_agreement, plot_routing, plot_usage, save_figure
from tiger.analysis.routing import (
    Importance,
    RoutingStatistics,
    counterfactual_importance,
    format_shapley_table,
    format_usage_table,
    mean_usage,
    shapley_credit,
    shapley_pairs,
    subsets,
)
from tiger.model import TIGER, TigerConfig
from tiger.tasks import make_task
from tiger.training.losses import LossConfig, pool_to_grid

TASKS = ["semseg", "depth"]


def assert_not_blank(path: Path) -> None:
    """The PNG exists, has contrast and more than two distinct colours."""
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert pixels.shape[0] > 50 and pixels.shape[1] > 50
    assert pixels.std() > 10.0
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 2


def statistics(alpha, importance=None, removals=(), credit=None, tasks=TASKS, experts=("clip", "sam")):
    stats = RoutingStatistics(tasks, list(experts), list(removals), shapley=credit is not None)
    stats.update(alpha, importance, credit)
    return stats.compute()


# ---------------------------------------------------------------------------------------------- usage


def test_usage_hand_example(tmp_path: Path) -> None:
    # B=2, T=2, M=2, N=2
    alpha = torch.tensor(
        [
            [[[1.0, 0.5], [0.0, 0.5]], [[0.2, 0.2], [0.8, 0.8]]],
            [[[0.5, 0.0], [0.5, 1.0]], [[0.6, 0.0], [0.4, 1.0]]],
        ]
    )
    usage = statistics(alpha)["usage"]
    assert usage["semseg"]["clip"] == pytest.approx((1.0 + 0.5 + 0.5 + 0.0) / 4)
    assert usage["semseg"]["sam"] == pytest.approx(0.5)
    assert usage["depth"]["clip"] == pytest.approx((0.2 + 0.2 + 0.6 + 0.0) / 4)
    assert usage["depth"]["sam"] == pytest.approx(0.75)
    assert mean_usage(alpha, TASKS, ["clip", "sam"]) == usage
    # batches of different token counts average over all tokens
    stats = RoutingStatistics(TASKS, ["clip", "sam"])
    stats.update(alpha[:1])
    stats.update(alpha[1:, :, :, :1])
    assert stats.compute()["usage"]["semseg"]["clip"] == pytest.approx((1.0 + 0.5 + 0.5) / 3)

    lines = format_usage_table(usage).splitlines()
    assert lines[0].split() == ["task", "clip", "sam"]
    assert lines[2].split() == ["semseg", "50.0%", "50.0%"]
    assert lines[3].split() == ["depth", "25.0%", "75.0%"]
    assert_not_blank(save_figure(plot_usage(usage), tmp_path / "usage.png"))
    with pytest.raises(ValueError, match="sum to one"):
        statistics(alpha * 2)


# ------------------------------------------------------------------------------------ target agreement


def test_agreement_identical_reversed_and_by_hand(tmp_path: Path) -> None:
    torch.manual_seed(0)
    alpha = torch.randn(2, 2, 4, 6).softmax(2)
    everywhere = torch.ones(2, 2, 6, dtype=torch.bool)
    same = statistics(alpha, {"mean": Importance(TASKS, alpha.clone(), everywhere)}, ["mean"], experts="abcd")
    for row in same["target_agreement"]["mean"].values():
        assert row["jsd"] == pytest.approx(0.0, abs=1e-12)
        assert (row["top1"], row["tokens"]) == (1.0, 12.0)
        assert row["spearman"] == pytest.approx(1.0)

    ascending = alpha.sort(dim=2).values
    kept = everywhere.clone()
    kept[:, 1, :3] = False
    reversed_ = statistics(
        ascending, {"mean": Importance(TASKS, ascending.flip(2), kept)}, ["mean"], experts="abcd"
    )
    rows = reversed_["target_agreement"]["mean"]
    assert rows["semseg"]["spearman"] == pytest.approx(-1.0) and rows["semseg"]["top1"] == 0.0
    assert rows["semseg"]["jsd"] > 0.0 and rows["depth"]["tokens"] == 6.0
    assert_not_blank(save_figure(plot_agreement(rows), tmp_path / "agreement.png"))

    # one token by hand: ranks (1,2,3,4) vs (1,2,4,3): rho = 1 - 6 * 2 / (4 * 15) = 0.8
    a = torch.tensor([0.1, 0.2, 0.3, 0.4]).view(1, 1, 4, 1)
    b = torch.tensor([0.1, 0.2, 0.4, 0.3]).view(1, 1, 4, 1)
    one = torch.ones(1, 1, 1, dtype=torch.bool)
    partial = statistics(
        a, {"subtract": Importance(["edge"], b, one)}, ["subtract"], tasks=["edge"], experts="abcd"
    )
    assert partial["target_agreement"]["subtract"]["edge"]["spearman"] == pytest.approx(0.8)
    assert partial["target_agreement"]["subtract"]["edge"]["top1"] == 0.0


def test_agreement_edge_cases() -> None:
    two = torch.tensor([[0.7, 0.3], [0.4, 0.6]]).T.reshape(1, 1, 2, 2)  # tokens (0.7, 0.3), (0.4, 0.6)
    every = torch.ones(1, 1, 2, dtype=torch.bool)
    result = statistics(two, {"mean": Importance(["sal"], two.flip(2), every)}, ["mean"], tasks=["sal"])
    assert result["target_agreement"]["mean"]["sal"]["spearman"] == pytest.approx(-1.0)
    uniform = torch.full((1, 1, 3, 2), 1 / 3)
    none = torch.zeros(1, 1, 2, dtype=torch.bool)
    result = statistics(
        uniform, {"mean": Importance(["sal"], uniform, none)}, ["mean"], tasks=["sal"], experts="abc"
    )
    assert result["target_agreement"]["mean"] == {}  # no token carries a target: no row, never a NaN row


def test_statistics_accumulate_over_batches_as_over_one_batch() -> None:
    torch.manual_seed(3)
    experts = ["a", "b", "c"]
    alphas = [torch.randn(2, 2, 3, 5).softmax(2), torch.randn(3, 2, 3, 5).softmax(2)]
    ps = [torch.randn(2, 1, 3, 5).softmax(2), torch.randn(3, 1, 3, 5).softmax(2)]  # depth only
    kept = [torch.rand(2, 1, 5) > 0.3, torch.rand(3, 1, 5) > 0.3]
    stats = RoutingStatistics(TASKS, experts, ["mean"])
    for alpha, p, keep in zip(alphas, ps, kept, strict=True):
        stats.update(alpha, {"mean": Importance(["depth"], p, keep)})
    result = stats.compute()
    whole = statistics(
        torch.cat(alphas),
        {"mean": Importance(["depth"], torch.cat(ps), torch.cat(kept))},
        ["mean"],
        experts=experts,
    )
    for task in TASKS:
        assert result["usage"][task] == pytest.approx(whole["usage"][task])
    row, expected = result["target_agreement"]["mean"]["depth"], whole["target_agreement"]["mean"]["depth"]
    for key in ("jsd", "top1", "spearman", "tokens"):
        assert row[key] == pytest.approx(expected[key], abs=1e-9)
    tokens = torch.cat(kept)[:, 0]
    mean_p = (torch.cat(ps)[:, 0] * tokens[:, None]).sum((0, 2)) / tokens.sum()
    assert [row["importance"][e] for e in experts] == pytest.approx(mean_p.tolist(), abs=1e-6)
    assert "semseg" not in result["target_agreement"]["mean"]  # no targets, no agreement


# ---------------------------------------------------------------------------------------------- Shapley


def test_shapley_pairs_give_the_mean_gain_over_orderings() -> None:
    experts = 3
    present = subsets(experts)
    assert present.tolist()[5] == [1.0, 0.0, 1.0] and present.shape == (8, 3)
    losses = torch.randn(8, dtype=torch.float64)  # L(s) for every subset code s
    without, joined, weight = shapley_pairs(experts)
    assert weight.sum(1).tolist() == pytest.approx([1.0, 1.0, 1.0])
    by_orderings = torch.zeros(experts, dtype=torch.float64)
    for order in itertools.permutations(range(experts)):
        code = 0
        for k in order:
            by_orderings[k] += losses[code] - losses[code | 1 << k]
            code |= 1 << k
    by_orderings /= math.factorial(experts)
    torch.testing.assert_close((weight * (losses[without] - losses[joined])).sum(1), by_orderings)


class StandInExpert(nn.Module):
    """A throwaway frozen expert: a strided convolution of the resized image."""

    def __init__(self, channels: int, patch_size: int) -> None:
        super().__init__()
        self.name = f"stand_in_{channels}"
        self.identity = {"name": self.name}
        self.channels, self.patch_size = channels, patch_size
        self.conv = nn.Conv2d(3, channels, patch_size, patch_size)
        self.requires_grad_(False)

    def forward(self, images: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        size = (grid[0] * self.patch_size, grid[1] * self.patch_size)
        return self.conv(F.interpolate(images, size=size, mode="bilinear", align_corners=False))


def stand_in_tiger(
    experts: int = 3, expert_interaction: bool = True, seed: int = 0, twins: bool = False
) -> TIGER:
    """A TIGER over stand-in experts (of other widths and patch sizes; ``twins``: experts 0 and 1 alike)."""
    torch.manual_seed(seed)
    tasks = [make_task("semseg", num_classes=5), make_task("depth"), make_task("normals"), make_task("edge")]
    config = TigerConfig(
        experts={f"e{k}": {"name": f"stand_in_{k}"} for k in range(experts)},
        tasks=[task.name for task in tasks], grid=(2, 3), num_semseg_classes=5,
        instructions={"encoder": None}, dim=32, task_dim=24, rank=4, hyper_hidden=16, query_width=16,
        num_heads=4, decoder_width=32,
        decoder_upsamples=1, expert_interaction=expert_interaction,
    )  # fmt: skip
    shapes = [(8 + 4 * k, 8 if k % 2 == 0 else 4) for k in range(experts)]
    if twins:
        shapes[1] = shapes[0]
    stand_ins = [StandInExpert(*shape) for shape in shapes]
    return TIGER(stand_ins, tasks, config, None).eval()


def batch_targets(batch: int = 2, size: tuple[int, int] = (16, 24)) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    targets = {
        "semseg": torch.randint(0, 5, (batch, *size), generator=g),
        "depth": torch.rand(batch, 1, *size, generator=g) + 0.5,
        "normals": F.normalize(torch.randn(batch, 3, *size, generator=g), dim=1),
        "edge": (torch.rand(batch, *size, generator=g) > 0.8).float(),
    }
    targets["depth"][:, :, :8] = 0.0  # the top half has no depth: its tokens are not valid
    return targets


@pytest.fixture(scope="module")
def forward_pass():
    model = stand_in_tiger()
    images = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        output = model(images)
    return model, images, output


def brute_force_shapley(model, output, targets, task_index: int, removal: str) -> torch.Tensor:
    """phi (B, M, N) of one task: each subset decoded on its own, then the mean over all M! orderings."""
    task = model.tasks[task_index]
    experts = output.alpha.shape[2]
    losses: dict[frozenset[int], torch.Tensor] = {}

    def token_loss(present: set[int]) -> torch.Tensor:
        key = frozenset(present)
        if key not in losses:
            removed = torch.tensor([[0.0 if k in present else 1.0 for k in range(experts)]])
            logits = model.ablate(output, removed, removal)[task.name][:, 0]
            loss, weight = task.pixel_loss(logits, targets[task.name])
            pooled, _ = pool_to_grid(loss * weight, weight, output.grid)
            losses[key] = pooled.flatten(1).double()
        return losses[key]

    phi = torch.zeros(output.alpha.shape[0], experts, output.alpha.shape[-1], dtype=torch.float64)
    for order in itertools.permutations(range(experts)):
        present: set[int] = set()
        for k in order:
            phi[:, k] += token_loss(present) - token_loss(present | {k})
            present.add(k)
    return phi / math.factorial(experts)


@pytest.mark.parametrize("removal", ["subtract", "renormalize", "mean"])
def test_shapley_credit_equals_a_brute_force_over_orderings(forward_pass, removal) -> None:
    model, _, output = forward_pass
    targets = batch_targets()
    credit = shapley_credit(model, output, targets, removal)
    assert credit.tasks == model.task_names and credit.stderr is None
    for index in (0, 1):
        expected = brute_force_shapley(model, output, targets, index, removal).float()
        valid = credit.valid[:, index]
        torch.testing.assert_close(
            credit.phi[:, index].transpose(1, 2)[valid], expected.transpose(1, 2)[valid], atol=2e-5, rtol=1e-4
        )
    # efficiency: the credits of a token sum to L(none) - L(all)
    torch.testing.assert_close(credit.phi.sum(2), credit.total, atol=1e-5, rtol=1e-5)
    assert credit.valid[:, 1].sum() == 2 * 3  # depth: the bottom row of tokens only


def test_an_expert_whose_removal_changes_nothing_gets_exactly_zero() -> None:
    model = stand_in_tiger(expert_interaction=False)
    torch.nn.init.zeros_(model.projections[1].norm.weight)  # expert 1's tokens F'_1 are exactly zero
    torch.nn.init.zeros_(model.projections[1].norm.bias)
    with torch.no_grad():
        output = model(torch.rand(2, 3, 16, 24))
    credit = shapley_credit(model, output, batch_targets(), "subtract")
    assert torch.equal(credit.phi[:, :, 1], torch.zeros_like(credit.phi[:, :, 1]))  # the null player
    assert credit.phi[:, :, [0, 2]].abs().sum() > 0


def test_two_identical_experts_share_their_credit_equally() -> None:
    model = stand_in_tiger(experts=3, expert_interaction=False, twins=True)
    model.experts[1].load_state_dict(model.experts[0].state_dict())  # the same information ...
    model.projections[1].load_state_dict(model.projections[0].state_dict())  # ... encoded the same way
    with torch.no_grad():
        output = model(torch.rand(2, 3, 16, 24))
    torch.testing.assert_close(output.alpha[:, :, 0], output.alpha[:, :, 1])
    credit = shapley_credit(model, output, batch_targets(), "subtract")
    torch.testing.assert_close(credit.phi[:, :, 0], credit.phi[:, :, 1], atol=1e-5, rtol=1e-4)


def test_sampled_orderings_estimate_the_exact_credit(forward_pass, monkeypatch) -> None:
    model, _, output = forward_pass
    targets = batch_targets()
    exact = shapley_credit(model, output, targets, "subtract")
    monkeypatch.setattr(routing, "EXACT_UP_TO", 2)  # three experts: sampled
    sampled = shapley_credit(model, output, targets, "subtract", permutations=300,
                             generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert sampled.stderr is not None and (sampled.stderr >= 0).all()
    torch.testing.assert_close(sampled.phi.sum(2), sampled.total, atol=1e-5, rtol=1e-5)  # each ordering sums
    torch.testing.assert_close(sampled.total, exact.total, atol=1e-5, rtol=1e-5)
    error = (sampled.phi - exact.phi).abs()
    assert (error <= 4 * sampled.stderr + 1e-5).float().mean() > 0.97


def test_statistics_of_shapley_credit_by_hand() -> None:
    alpha = torch.tensor([0.6, 0.3, 0.1]).view(1, 1, 3, 1).repeat(1, 1, 1, 2)  # (1, 1, 3, 2)
    phi = torch.tensor([[0.5, 0.5], [-0.1, 0.0], [0.2, 0.0]]).view(1, 1, 3, 2)
    credit = routing.Credit(["depth"], phi, None, torch.ones(1, 1, 2, dtype=torch.bool), phi.sum(2))
    result = statistics(alpha, credit=credit, tasks=["depth"], experts="abc")["shapley"]["depth"]
    # token 0: expert b has credit <= 0 (alpha 0.3); token 1: b and c have 0 (alpha 0.3 + 0.1)
    assert result["useless_mass"] == pytest.approx((0.3 + 0.4) / 2)
    assert result["credit"] == pytest.approx({"a": 0.5, "b": -0.05, "c": 0.1})
    # token 0: ranks (3, 2, 1) vs (3, 1, 2): rho = 0.5; token 1: (3, 2, 1) vs (3, 1.5, 1.5): rho = 0.866
    assert result["spearman"] == pytest.approx((0.5 + math.sqrt(3) / 2) / 2)
    assert result["top1"] == 1.0 and result["tokens"] == 2.0
    assert format_shapley_table({"depth": result}).splitlines()[2].split()[:4] == [
        "depth",
        "+0.683",
        "1.000",
        "35.0%",
    ]


def test_counterfactual_target_of_a_real_forward_pass(forward_pass, tmp_path: Path) -> None:
    model, images, output = forward_pass
    targets = batch_targets()
    found = counterfactual_importance(model, output, targets, LossConfig())
    assert found.tasks == model.task_names
    assert found.has_target[:, 0].sum() == 2 * 6 and found.has_target[:, 1].sum() == 2 * 3
    result = statistics(
        output.alpha, {"subtract": found}, ["subtract"], tasks=model.task_names, experts="abc"
    )
    top1 = (output.alpha.argmax(2) == found.p.argmax(2))[:, 1][found.has_target[:, 1]].double().mean()
    assert result["target_agreement"]["subtract"]["depth"]["top1"] == pytest.approx(float(top1))
    positive = counterfactual_importance(model, output, targets, LossConfig(target="positive"))
    assert (positive.p[positive.has_target[:, :, None].expand_as(positive.p)] >= 0).all()
    fig = plot_routing(images[0], output.alpha[0], model.grid, model.task_names, model.expert_names)
    assert_not_blank(save_figure(fig, tmp_path / "routing.png"))
    with pytest.raises(ValueError, match="targets must name some of the model's tasks"):
        counterfactual_importance(model, output, {"flow": targets["depth"]}, LossConfig())
