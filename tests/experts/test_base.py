"""The shared expert interface: eq. 1 resize + normalisation, frozen state, input checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tiger.experts import Expert, build_expert
from tiger.experts.base import IMAGENET_MEAN, IMAGENET_STD, check_grid, tokens_to_map

TINY_EXPERTS = ["clip_tiny", "dinov2_tiny", "sam_tiny", "owlv2_tiny"]


class PatchMeanExpert(Expert):
    """Mean pixel of each patch: makes eq. 1 visible in the output numbers."""

    def __init__(self, patch_size: int = 4) -> None:
        super().__init__(
            nn.Identity(),
            name="patch_mean",
            patch_size=patch_size,
            channels=3,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            identity={"name": "patch_mean", "weights": None},
        )

    def extract(self, pixels: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return nn.functional.avg_pool2d(pixels, self.patch_size)


def test_eq1_resizes_to_grid_times_patch_and_normalises() -> None:
    expert = PatchMeanExpert(patch_size=4)
    image = torch.zeros(1, 3, 30, 40)
    image[:, 0] = 0.2
    image[:, 1] = 0.5
    image[:, 2, :15] = 1.0  # top half of the blue channel bright, bottom half dark
    features = expert(image, (3, 5))
    assert features.shape == (1, 3, 3, 5)
    red = (0.2 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    green = (0.5 - IMAGENET_MEAN[1]) / IMAGENET_STD[1]
    torch.testing.assert_close(features[0, 0], torch.full((3, 5), red))
    torch.testing.assert_close(features[0, 1], torch.full((3, 5), green))
    blue_bright = (1.0 - IMAGENET_MEAN[2]) / IMAGENET_STD[2]
    blue_dark = (0.0 - IMAGENET_MEAN[2]) / IMAGENET_STD[2]
    torch.testing.assert_close(features[0, 2, 0], torch.full((5,), blue_bright))
    torch.testing.assert_close(features[0, 2, 2], torch.full((5,), blue_dark))


def test_tokens_to_map_is_row_major() -> None:
    tokens = torch.arange(6.0).view(1, 6, 1)  # token n at row n // 3, column n % 3
    assert tokens_to_map(tokens, (2, 3))[0, 0].tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]


@pytest.mark.parametrize("name", TINY_EXPERTS)
def test_expert_is_frozen_even_when_parent_trains(name: str, images: torch.Tensor) -> None:
    expert = build_expert(name)
    parent = nn.Sequential(expert, nn.Identity()).train()
    assert parent.training and not expert.training
    assert not any(module.training for module in expert.modules())
    assert not any(param.requires_grad for param in expert.parameters())
    features = expert(images.requires_grad_(), (2, 3))
    assert features.grad_fn is None and not features.requires_grad


@pytest.mark.parametrize(
    "bad, expected",
    [
        (torch.rand(2, 1, 32, 32), r"\(B, 3, H0, W0\)"),
        (torch.rand(2, 4, 32, 32), r"\(B, 3, H0, W0\)"),
        (torch.rand(3, 32, 32), r"got \(3, 32, 32\)"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "float"),
    ],
)
def test_non_rgb_input_is_rejected(bad: torch.Tensor, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        PatchMeanExpert()(bad, (2, 2))


@pytest.mark.parametrize(
    "grid, expected",
    [
        ((0, 4), "at least"),
        ((3, -1), "at least"),
        ((41, 4), "more tokens"),
        ((4, 51), "more tokens"),
        ((3,), "two"),
    ],
)
def test_bad_grid_is_rejected(grid: tuple[int, ...], expected: str, images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=expected):
        PatchMeanExpert()(images, grid)


def test_check_grid_accepts_the_largest_grid(images: torch.Tensor) -> None:
    assert check_grid((40, 50), images) == (40, 50)
    assert check_grid(torch.tensor([3, 4]), images) == (3, 4)
