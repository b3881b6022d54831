from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from tiger.losses import TigerLoss, causal_importance
from tiger.model import TIGER
from tiger.tasks import make_task
from tiger.viz import (
    colorize,
    expert_usage,
    format_usage_table,
    plot_agreement,
    plot_routing,
    plot_task_similarity,
    plot_usage,
    routing_agreement,
    routing_maps,
    save_figure,
    task_similarity,
)


def assert_not_blank(path: Path) -> None:
    """The PNG exists, has contrast and more than two distinct colours."""
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert pixels.shape[0] > 50 and pixels.shape[1] > 50
    assert pixels.std() > 10.0
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 2


# ---------------------------------------------------------------------------------------------- colorize


def test_colorize_semseg_uses_the_voc_palette_and_marks_ignore() -> None:
    labels = np.array([[0, 1, 15], [255, 2, 20]], dtype=np.int64)
    rgb = colorize("semseg", torch.from_numpy(labels), num_classes=21)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    assert rgb[0, 0].tolist() == [0, 0, 0]
    assert rgb[0, 1].tolist() == [128, 0, 0]
    assert rgb[0, 2].tolist() == [192, 128, 128]  # VOC "person"
    assert rgb[1, 0].tolist() == [255, 255, 255]  # ignore
    assert rgb[1, 1].tolist() == [0, 128, 0]
    assert rgb[1, 2].tolist() == [0, 64, 128]  # VOC "tvmonitor"


def test_colorize_human_parts_rejects_labels_out_of_range() -> None:
    assert colorize("human_parts", np.array([[6, 3]]))[0, 1].tolist() == [128, 128, 0]
    with pytest.raises(ValueError, match=r"human_parts.*\[0, 7\).*\[9\]"):
        colorize("human_parts", np.array([[0, 9]]))
    with pytest.raises(ValueError, match="integer class map"):
        colorize("semseg", np.zeros((4, 4), dtype=np.float32))


def test_colorize_normals() -> None:
    normals = np.zeros((2, 2, 3), dtype=np.float32)
    normals[0, 0] = (0, 0, 1)
    normals[0, 1] = (1, 0, 0)
    normals[1, 0] = (0, -1, 0)
    rgb = colorize("normals", normals)
    assert rgb[0, 0, 0] in (127, 128) and rgb[0, 0, 1] in (127, 128) and rgb[0, 0, 2] == 255
    assert rgb[0, 1].tolist()[0] == 255 and rgb[0, 1, 2] in (127, 128)
    assert rgb[1, 0, 1] == 0
    assert rgb[1, 1].tolist() == [0, 0, 0]  # all-zero = invalid
    chw = colorize("normals", torch.from_numpy(normals).permute(2, 0, 1))
    np.testing.assert_array_equal(chw, rgb)


def test_colorize_depth_follows_the_colormap_near_bright() -> None:
    depth = np.linspace(1.0, 5.0, 9, dtype=np.float32)[None].repeat(2, 0)
    depth[1, 0] = 0.0  # invalid
    rgb = colorize("depth", depth, vmin=1.0, vmax=5.0, cmap="magma")
    position = (5.0 - depth[0]) / 4.0
    expected = (matplotlib.colormaps["magma"](position)[:, :3] * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(rgb[0], expected)
    brightness = rgb[0].astype(float).sum(-1)
    assert np.all(np.diff(brightness) < 0)  # farther = darker for magma
    assert rgb[1, 0].tolist() == [0, 0, 0]
    # Robust default range: one far outlier does not wash out the rest.
    ramp = np.concatenate([np.linspace(1.0, 2.0, 99), [100.0]])[None]
    robust = colorize("depth", ramp[None])
    assert robust[0, 0].astype(int).sum() > robust[0, 50].astype(int).sum() + 100


def test_colorize_probabilities_and_unknown_task() -> None:
    sal = colorize("sal", np.array([[0.0, 0.5, 1.0]]))
    assert sal[0, :, 0].tolist() == [0, 128, 255] and (sal[..., 0] == sal[..., 2]).all()
    assert colorize("edge", np.array([[0, 255]], dtype=np.uint8))[0, :, 1].tolist() == [0, 255]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        colorize("edge", np.array([[1.5]]))
    with pytest.raises(ValueError, match="known tasks: semseg"):
        colorize("optical_flow", np.zeros((2, 2)))


# ---------------------------------------------------------------------------------------------- routing


def one_hot_alpha(grid: tuple[int, int], special: int) -> torch.Tensor:
    """(T=2, M=3, N): expert 0 everywhere, but token ``special`` -> expert 2 (task 0) / 1 (task 1)."""
    tokens = grid[0] * grid[1]
    alpha = torch.zeros(2, 3, tokens)
    alpha[:, 0] = 1.0
    alpha[:, 0, special] = 0.0
    alpha[0, 2, special] = 1.0
    alpha[1, 1, special] = 1.0
    return alpha


def test_routing_maps_interpolate_and_keep_the_weights() -> None:
    grid = (3, 4)
    special = 1 * 4 + 2  # token at row 1, column 2
    maps = routing_maps(one_hot_alpha(grid, special), grid, (9, 12))  # 3x upsampling
    assert maps.shape == (2, 3, 9, 12) and maps.dtype == np.float32
    # The pixel at the centre of token (1, 2) is pixel (4, 7): exactly that token's weights.
    assert maps[0, 2, 4, 7] == pytest.approx(1.0, abs=1e-6)
    assert maps[1, 1, 4, 7] == pytest.approx(1.0, abs=1e-6)
    assert maps[0, 0, 4, 7] == pytest.approx(0.0, abs=1e-6)
    assert maps[0, 0, 0, 0] == pytest.approx(1.0, abs=1e-6)
    # Bilinear in between: half way to the neighbouring token's centre, and still summing to one.
    assert 0.0 < maps[0, 2, 4, 8] < 1.0
    np.testing.assert_allclose(maps.sum(1), 1.0, atol=1e-6)
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    with pytest.raises(ValueError, match="N = 3\\*5"):
        routing_maps(one_hot_alpha(grid, special), (3, 5), (9, 12))


def test_plot_routing_writes_a_figure(tmp_path: Path) -> None:
    grid = (3, 4)
    image = (np.random.default_rng(0).random((24, 32, 3)) * 255).astype(np.uint8)
    alpha = torch.rand(2, 3, 12).softmax(1)
    fig = plot_routing(image, alpha, grid, ["semseg", "depth"], ["clip", "dinov2", "sam"])
    assert len(fig.axes) == 2 * 5 + 1  # panels + shared colorbar
    titles = [ax.get_title() for ax in fig.axes]
    assert "semseg: dinov2" in titles and "depth: argmax expert" in titles
    path = save_figure(fig, tmp_path / "nested" / "routing.png")
    assert path.exists()
    assert_not_blank(path)
    float_chw = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    fig = plot_routing(float_chw, alpha, grid, ["semseg", "depth"], ["clip", "dinov2", "sam"], overlay=False)
    assert_not_blank(save_figure(fig, tmp_path / "routing_plain.png"))
    with pytest.raises(ValueError, match="alpha must be"):
        plot_routing(image, alpha, grid, ["semseg"], ["clip", "dinov2", "sam"])


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
    delta, valid = TigerLoss(model.tasks).counterfactual_delta(model, output, targets)
    p = causal_importance(delta, tau=1.0, dim=2)
    agreement = routing_agreement(output.alpha, p, valid, model.task_names)
    assert agreement["semseg"]["tokens"] == 2 * 6 and agreement["depth"]["tokens"] == 2 * 3
    top1 = (output.alpha.argmax(2) == p.argmax(2))[:, 1][valid[:, 1]].double().mean()
    assert agreement["depth"]["top1"] == pytest.approx(float(top1))

    usage = expert_usage(output.alpha, model.task_names, model.expert_names)
    means = output.alpha.mean((0, 3))
    assert usage["edge"][model.expert_names[1]] == pytest.approx(float(means[3, 1]), abs=1e-6)

    fig = plot_routing(images[0], output.alpha[0], model.grid, model.task_names, model.expert_names)
    assert_not_blank(save_figure(fig, tmp_path / "routing.png"))
