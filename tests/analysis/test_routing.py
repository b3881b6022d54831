"""Routing analysis: expert usage, faithfulness (alpha vs counterfactual importance), task similarity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from tiger.analysis.routing import (
    RoutingStatistics,
    counterfactual_importance,
    expert_usage,
    format_usage_table,
    routing_agreement,
    task_similarity,
)
from tiger.training.losses import causal_importance
from tiger.model import TIGER
from tiger.tasks import make_task
from tiger.analysis.figures import plot_agreement, plot_routing, plot_task_similarity, plot_usage, save_figure


def assert_not_blank(path: Path) -> None:
    """The PNG exists, has contrast and more than two distinct colours."""
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert pixels.shape[0] > 50 and pixels.shape[1] > 50
    assert pixels.std() > 10.0
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 2


# ---------------------------------------------------------------------------------------------- usage


def test_expert_usage_hand_example(tmp_path: Path) -> None:
    # B=2, T=2, M=2, N=2
    alpha = torch.tensor(
        [
            [[[1.0, 0.5], [0.0, 0.5]], [[0.2, 0.2], [0.8, 0.8]]],
            [[[0.5, 0.0], [0.5, 1.0]], [[0.6, 0.0], [0.4, 1.0]]],
        ]
    )
    usage = expert_usage(alpha, ["semseg", "depth"], ["clip", "sam"])
    assert usage["semseg"]["clip"] == pytest.approx((1.0 + 0.5 + 0.5 + 0.0) / 4)
    assert usage["semseg"]["sam"] == pytest.approx(0.5)
    assert usage["depth"]["clip"] == pytest.approx((0.2 + 0.2 + 0.6 + 0.0) / 4)
    assert usage["depth"]["sam"] == pytest.approx(0.75)
    for row in usage.values():
        assert sum(row.values()) == pytest.approx(1.0)
    # A list of batches (of different token counts) averages over all tokens.
    listed = expert_usage([alpha[:1], alpha[1:, :, :, :1]], ["semseg", "depth"], ["clip", "sam"])
    assert listed["semseg"]["clip"] == pytest.approx((1.0 + 0.5 + 0.5) / 3)

    table = format_usage_table(usage)
    lines = table.splitlines()
    assert lines[0].split() == ["task", "clip", "sam"]
    assert lines[2].split() == ["semseg", "50.0%", "50.0%"]
    assert lines[3].split() == ["depth", "25.0%", "75.0%"]

    assert_not_blank(save_figure(plot_usage(usage), tmp_path / "usage.png"))
    with pytest.raises(ValueError, match="sum to one"):
        expert_usage(alpha * 2, ["semseg", "depth"], ["clip", "sam"])
    with pytest.raises(ValueError, match="T, M"):
        expert_usage(alpha, ["semseg"], ["clip", "sam"])


# ---------------------------------------------------------------------------------------------- agreement


def test_routing_agreement_identical_and_reversed(tmp_path: Path) -> None:
    torch.manual_seed(0)
    alpha = torch.randn(2, 2, 4, 6).softmax(2)
    same = routing_agreement(alpha, alpha.clone(), None, ["semseg", "depth"])
    for row in same.values():
        assert row["jsd"] == pytest.approx(0.0, abs=1e-12)
        assert row["top1"] == 1.0
        assert row["spearman"] == pytest.approx(1.0)
        assert row["tokens"] == 12.0

    ascending = alpha.sort(dim=2).values
    descending = ascending.flip(2)
    valid = torch.ones(2, 2, 6, dtype=torch.bool)
    valid[:, 1, :3] = False
    reversed_ = routing_agreement(ascending, descending, valid, ["semseg", "depth"])
    assert reversed_["semseg"]["spearman"] == pytest.approx(-1.0)
    assert reversed_["semseg"]["top1"] == 0.0
    assert reversed_["semseg"]["jsd"] > 0.0
    assert reversed_["depth"]["tokens"] == 6.0

    # Partial agreement on one token by hand: ranks (1,2,3,4) vs (1,2,4,3): rho = 1 - 6*2/(4*15) = 0.8.
    a = torch.tensor([0.1, 0.2, 0.3, 0.4]).view(1, 1, 4, 1)
    b = torch.tensor([0.1, 0.2, 0.4, 0.3]).view(1, 1, 4, 1)
    partial = routing_agreement(a, b, None, ["edge"])["edge"]
    assert partial["spearman"] == pytest.approx(0.8)
    assert partial["top1"] == 0.0

    # With real counterfactual importances the numbers are finite and in range.
    p = causal_importance(torch.randn(2, 2, 4, 6), tau=1.0, dim=2)
    real = routing_agreement(alpha, p, valid, ["semseg", "depth"])
    assert 0.0 <= real["depth"]["jsd"] <= np.log(2) and -1.0 <= real["depth"]["spearman"] <= 1.0
    assert_not_blank(save_figure(plot_agreement(real), tmp_path / "agreement.png"))


def test_routing_agreement_edge_cases() -> None:
    two = torch.tensor([[0.7, 0.3], [0.4, 0.6]]).T.reshape(1, 1, 2, 2)  # tokens: (0.7,0.3), (0.4,0.6)
    flipped = two.flip(2)
    result = routing_agreement(two, flipped, None, ["sal"])["sal"]
    assert result["spearman"] == pytest.approx(-1.0) and result["top1"] == 0.0
    uniform = torch.full((1, 1, 3, 2), 1 / 3)
    result = routing_agreement(uniform, uniform, torch.zeros(1, 1, 2, dtype=torch.bool), ["sal"])["sal"]
    assert result["tokens"] == 0.0 and np.isnan(result["jsd"]) and np.isnan(result["spearman"])
    with pytest.raises(ValueError, match="valid must be"):
        routing_agreement(uniform, uniform, torch.ones(1, 2, 2, dtype=torch.bool), ["sal"])


# ------------------------------------------------------------------------------------- task similarity


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


def tiny_tiger(instructions: bool) -> TIGER:
    torch.manual_seed(0)
    tasks = [make_task("semseg", num_classes=5), make_task("depth"), make_task("normals"), make_task("edge")]
    embeddings = torch.randn(len(tasks), 24) if instructions else None
    return TIGER(
        [StandInExpert(8, 8), StandInExpert(12, 4)],
        tasks,
        (2, 3),
        embeddings,
        dim=32,
        task_dim=24,
        rank=4,
        hyper_hidden=16,
        query_width=16,
        num_heads=4,
        decoder_width=32,
        decoder_upsamples=1,
    )


def test_task_similarity_matrices(tmp_path: Path) -> None:
    model = tiny_tiger(instructions=True)
    sims = task_similarity(model)
    assert list(sims) == ["instruction", "task", "hyper"]
    for matrix in sims.values():
        assert matrix.shape == (4, 4)
        np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-9)
        np.testing.assert_allclose(matrix, matrix.T, atol=1e-12)
        assert np.abs(matrix).max() <= 1.0
    t0 = model.task_representation.instruction_embeddings
    expected = F.cosine_similarity(t0[:, None], t0[None], dim=-1)
    np.testing.assert_allclose(sims["instruction"], expected.numpy(), atol=1e-5)
    with torch.no_grad():
        t = model.task_representation()
        outputs = torch.cat([model.hyper.g(t), model.hyper.h(t)], 1)
        h = model.hyper.h(t)
    np.testing.assert_allclose(
        sims["hyper"], F.cosine_similarity(outputs[:, None], outputs[None], -1), atol=1e-5
    )
    # V starts at zero, so W_Q(t) - W0 = 0 and the "weights" view reduces to the bias part h(t).
    weights_view = task_similarity(model, hyper="weights")["hyper"]
    np.testing.assert_allclose(weights_view, F.cosine_similarity(h[:, None], h[None], -1), atol=1e-5)
    assert not np.allclose(weights_view, sims["hyper"])

    names = model.task_names
    assert_not_blank(save_figure(plot_task_similarity(sims, names), tmp_path / "similarity.png"))
    with pytest.raises(ValueError, match="must be \\(3, 3\\)"):
        plot_task_similarity(sims, names[:3])


def test_task_similarity_without_instructions() -> None:
    model = tiny_tiger(instructions=False)
    sims = task_similarity(model)
    assert list(sims) == ["task", "hyper"]
    prompts = model.task_representation.prompts.detach()
    np.testing.assert_allclose(
        sims["task"], F.cosine_similarity(prompts[:, None], prompts[None], -1).numpy(), atol=1e-5
    )
    with pytest.raises(ValueError, match="'outputs' or 'weights'"):
        task_similarity(model, hyper="gates")  # type: ignore[arg-type]


def test_analysis_of_a_real_forward_pass(tmp_path: Path) -> None:
    model = tiny_tiger(instructions=True)
    images = torch.rand(2, 3, 16, 24)
    with torch.no_grad():
        output = model(images)
    targets = {
        "semseg": torch.randint(0, 5, (2, 16, 24)),
        "depth": torch.rand(2, 1, 16, 24) + 0.5,
        "normals": F.normalize(torch.randn(2, 3, 16, 24), dim=1),
        "edge": (torch.rand(2, 16, 24) > 0.8).float(),
    }
    targets["depth"][:, :, :8] = 0.0  # the top half of the image has no depth: its tokens are not valid
    tasks, p, valid = counterfactual_importance(model, output, targets)
    assert [task.name for task in tasks] == model.task_names
    agreement = routing_agreement(output.alpha, p, valid, model.task_names)
    assert agreement["semseg"]["tokens"] == 2 * 6 and agreement["depth"]["tokens"] == 2 * 3
    top1 = (output.alpha.argmax(2) == p.argmax(2))[:, 1][valid[:, 1]].double().mean()
    assert agreement["depth"]["top1"] == pytest.approx(float(top1))

    usage = expert_usage(output.alpha, model.task_names, model.expert_names)
    means = output.alpha.mean((0, 3))
    assert usage["edge"][model.expert_names[1]] == pytest.approx(float(means[3, 1]), abs=1e-6)

    fig = plot_routing(images[0], output.alpha[0], model.grid, model.task_names, model.expert_names)
    assert_not_blank(save_figure(fig, tmp_path / "routing.png"))


def test_routing_statistics_accumulate_usage_and_agreement_over_batches() -> None:
    torch.manual_seed(3)
    names, experts = ["semseg", "depth"], ["a", "b", "c"]
    alphas = [torch.randn(2, 2, 3, 5).softmax(2), torch.randn(3, 2, 3, 5).softmax(2)]
    ps = [torch.randn(2, 1, 3, 5).softmax(2), torch.randn(3, 1, 3, 5).softmax(2)]  # depth only
    valids = [torch.rand(2, 1, 5) > 0.3, torch.rand(3, 1, 5) > 0.3]
    stats = RoutingStatistics(names, experts, ["mean"])
    for alpha, p, valid in zip(alphas, ps, valids, strict=True):
        stats.update(alpha, {"mean": (["depth"], p, valid)})
    result = stats.compute()
    usage = expert_usage(alphas, names, experts)
    for task in names:
        for expert in experts:
            assert result["usage"][task][expert] == pytest.approx(usage[task][expert], abs=1e-9)
    expected = routing_agreement(torch.cat(alphas)[:, 1:], torch.cat(ps), torch.cat(valids), ["depth"])[
        "depth"
    ]
    row = result["faithfulness"]["mean"]["depth"]
    for key in ("jsd", "top1", "spearman", "tokens"):
        assert row[key] == pytest.approx(expected[key], abs=1e-9)
    tokens = torch.cat(valids)[:, 0]
    mean_p = (torch.cat(ps)[:, 0] * tokens[:, None]).sum((0, 2)) / tokens.sum()
    assert [row["importance"][e] for e in experts] == pytest.approx(mean_p.tolist(), abs=1e-6)
    assert "semseg" not in result["faithfulness"]["mean"]  # no targets, no faithfulness
