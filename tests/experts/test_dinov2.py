"""DINOv2 experts through transformers: any grid, save_pretrained folders, clear hub errors."""

from __future__ import annotations

import pytest
import torch
from transformers import Dinov2Backbone, Dinov2Config, Dinov2Model

from tiger.experts import ExpertWeightsError, build_expert
from tiger.experts.base import IMAGENET_MEAN, IMAGENET_STD


@pytest.mark.parametrize("grid", [(3, 4), (2, 2)])
def test_features_have_the_grid_shape(grid: tuple[int, int], images: torch.Tensor) -> None:
    expert = build_expert("dinov2_tiny")
    features = expert(images, grid)
    assert features.shape == (2, 48, *grid)
    assert torch.isfinite(features).all()
    assert (expert.patch_size, expert.channels) == (14, 48)
    assert expert.mean == IMAGENET_MEAN and expert.std == IMAGENET_STD


def test_save_pretrained_folder_gives_the_saved_features(tmp_path, images: torch.Tensor) -> None:
    saved = build_expert("dinov2_tiny", seed=5)
    saved.backbone.save_pretrained(tmp_path)
    loaded = build_expert("dinov2_tiny", weights=str(tmp_path), seed=99)
    assert torch.equal(loaded(images, (3, 4)), saved(images, (3, 4)))
    assert not torch.allclose(build_expert("dinov2_tiny", seed=99)(images, (3, 4)), saved(images, (3, 4)))
    assert loaded.identity["weights"] == str(tmp_path.resolve())


def test_layout_matches_the_transformers_backbone_feature_map(tmp_path, images: torch.Tensor) -> None:
    expert = build_expert("dinov2_tiny", seed=2)
    expert.backbone.save_pretrained(tmp_path)
    backbone = Dinov2Backbone.from_pretrained(tmp_path, out_features=["stage2"]).eval()
    grid = (3, 5)  # non-square: a transposed reshape would not match
    pixels = torch.nn.functional.interpolate(images, size=(42, 70), mode="bilinear")
    pixels = (pixels - expert.pixel_mean) / expert.pixel_std
    with torch.no_grad():
        (reference,) = backbone(pixels).feature_maps
    torch.testing.assert_close(expert(images, grid), reference, atol=1e-5, rtol=1e-5)


def test_other_architecture_in_the_folder_is_refused(tmp_path) -> None:
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2)).save_pretrained(
        tmp_path
    )
    with pytest.raises(ExpertWeightsError, match="hidden_size=32, expected 48"):
        build_expert("dinov2_tiny", weights=str(tmp_path))


def test_missing_folder_names_the_path(tmp_path) -> None:
    missing = tmp_path / "nowhere" / "dinov2"
    with pytest.raises(ExpertWeightsError, match="nowhere/dinov2.*does not exist.*facebook/dinov2-base"):
        build_expert("dinov2_b14", weights=str(missing))


def test_checkpoint_of_another_depth_or_head_count_is_refused(tmp_path) -> None:
    config = Dinov2Config(hidden_size=48, num_hidden_layers=1, num_attention_heads=4, image_size=224)
    Dinov2Model(config).save_pretrained(tmp_path)  # same width and patch as dinov2_tiny
    with pytest.raises(
        ExpertWeightsError, match="num_hidden_layers=1, expected 2; num_attention_heads=4, expected 2"
    ):
        build_expert("dinov2_tiny", weights=str(tmp_path))


def test_offline_hub_name_is_a_short_clear_error(hub_offline, tmp_path) -> None:
    with pytest.raises(ExpertWeightsError) as info:
        build_expert("dinov2_b14")
    message = str(info.value)
    assert "facebook/dinov2-base" in message and "experts.<role>.weights=" in message
    assert f"cached under {tmp_path / 'hf_cache'}" in message  # the hub's real cache ($HF_HOME), not ~/.cache
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize("name, count", [("dinov2_b14", 86_580_480), ("dinov2_l14", 304_368_640)])
def test_real_architectures_have_the_published_size(name: str, count: int) -> None:
    with torch.device("meta"):  # shapes only: the real builder, no memory, no init time
        expert = build_expert(name, weights=None)
    assert sum(p.numel() for p in expert.parameters()) == count  # DINOv2 ViT-B/14 86.6M, ViT-L/14 304.4M
    assert (expert.patch_size, expert.channels) == (14, 768 if name == "dinov2_b14" else 1024)
