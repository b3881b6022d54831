"""Task similarity along the routing path (the paper's Fig. 6)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tiger.analysis.figures import plot_task_similarity, save_figure
from tiger.analysis.similarity import task_similarity
from tiger.model import TIGER, TigerConfig
from tiger.tasks import make_task


def assert_not_blank(path: Path) -> None:
    from PIL import Image

    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert pixels.shape[0] > 50 and pixels.shape[1] > 50 and pixels.std() > 10.0


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
    names = ["semseg", "depth", "normals", "edge"]
    tasks = [make_task("semseg", num_classes=5), *(make_task(name) for name in names[1:])]
    embeddings = torch.randn(len(tasks), 24) if instructions else None
    config = TigerConfig(
        experts={"a": {"name": "stand_in_8"}, "b": {"name": "stand_in_12"}}, tasks=names, grid=(2, 3),
        num_semseg_classes=5, instructions={"encoder": None}, dim=32, task_dim=24, rank=4, hyper_hidden=16,
        query_width=16, num_heads=4, decoder_width=32, decoder_upsamples=1,
    )  # fmt: skip
    return TIGER([StandInExpert(8, 8), StandInExpert(12, 4)], tasks, config, embeddings)


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
