"""OWLv2 experts through transformers: any grid, vision-only and whole-detector folders."""

from __future__ import annotations

import pytest
import torch
from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2VisionConfig, Owlv2VisionModel

from tiger.experts import ExpertWeightsError, build_expert
from tiger.experts.base import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from tiger.experts.owlv2 import OWLV2_TINY


@pytest.mark.parametrize("grid", [(3, 4), (2, 2)])
def test_features_have_the_grid_shape(grid: tuple[int, int], images: torch.Tensor) -> None:
    expert = build_expert("owlv2_tiny")
    features = expert(images, grid)
    assert features.shape == (2, 64, *grid)
    assert torch.isfinite(features).all()
    assert (expert.patch_size, expert.channels) == (14, 64)
    assert expert.mean == OPENAI_CLIP_MEAN and expert.std == OPENAI_CLIP_STD


def test_tokens_come_after_post_layernorm(images: torch.Tensor) -> None:
    expert = build_expert("owlv2_tiny", seed=4)
    layernorm = expert.backbone.vision_model.post_layernorm
    with torch.no_grad():
        layernorm.weight.copy_(torch.linspace(0.5, 2.0, 64))
        layernorm.bias.fill_(0.25)
    features = expert(images, (3, 4))
    standardised = (features - 0.25) / layernorm.weight.view(1, -1, 1, 1)
    torch.testing.assert_close(standardised.mean(1), torch.zeros(2, 3, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(standardised.var(1, unbiased=False), torch.ones(2, 3, 4), atol=1e-3, rtol=0)


def test_vision_model_folder_gives_the_saved_features(tmp_path, images: torch.Tensor) -> None:
    saved = build_expert("owlv2_tiny", seed=5)
    saved.backbone.save_pretrained(tmp_path)
    loaded = build_expert("owlv2_tiny", weights=str(tmp_path), seed=99)
    assert torch.equal(loaded(images, (3, 4)), saved(images, (3, 4)))
    assert not torch.allclose(build_expert("owlv2_tiny", seed=99)(images, (3, 4)), saved(images, (3, 4)))


def test_whole_detector_folder_like_the_hub_checkpoint_loads(tmp_path, images: torch.Tensor) -> None:
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = Owlv2Config(
        text_config={**text, "vocab_size": 100}, vision_config=OWLV2_TINY.config, projection_dim=32
    )
    torch.manual_seed(0)
    detector = Owlv2ForObjectDetection(config).eval()
    detector.save_pretrained(tmp_path)
    loaded = build_expert("owlv2_tiny", weights=str(tmp_path))
    vision = detector.owlv2.vision_model
    pixels = torch.nn.functional.interpolate(images, size=(42, 28), mode="bilinear")
    pixels = (pixels - loaded.pixel_mean) / loaded.pixel_std
    with torch.no_grad():
        hidden = vision(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
        reference = vision.post_layernorm(hidden[:, 1:]).transpose(1, 2).reshape(2, 64, 3, 2)
    torch.testing.assert_close(loaded(images, (3, 2)), reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"num_hidden_layers": 1}, "num_hidden_layers=1, expected 2"),
        ({"num_attention_heads": 4}, "num_attention_heads=4, expected 2"),
        ({"intermediate_size": 96}, "intermediate_size=96, expected 128"),
    ],
)
def test_checkpoint_of_another_depth_heads_or_mlp_is_refused(tmp_path, change, message) -> None:
    Owlv2VisionModel(Owlv2VisionConfig(**{**OWLV2_TINY.config, **change})).save_pretrained(tmp_path)
    with pytest.raises(ExpertWeightsError, match=f"have {message}: pick the expert name"):
        build_expert("owlv2_tiny", weights=str(tmp_path))


def test_folder_of_another_family_is_refused(tmp_path) -> None:
    build_expert("dinov2_tiny").backbone.save_pretrained(tmp_path)
    with pytest.raises(ExpertWeightsError, match=r"lack \d+ parameters of Owlv2VisionModel"):
        build_expert("owlv2_tiny", weights=str(tmp_path))


def test_offline_hub_name_is_a_short_clear_error(hub_offline) -> None:
    with pytest.raises(ExpertWeightsError, match="google/owlv2-large-patch14-ensemble"):
        build_expert("owlv2_l14")


def test_real_owlv2_l14_is_clip_l14_with_a_960_pixel_position_table() -> None:
    with torch.device("meta"):
        expert = build_expert("owlv2_l14", weights=None)
    clip_l14_visual = (
        303_179_776  # open_clip ViT-L/14 visual tower without its projection (224 px, 257 positions)
    )
    positions = (960 // 14) ** 2 + 1
    assert sum(p.numel() for p in expert.parameters()) == clip_l14_visual + (positions - 257) * 1024
    assert (expert.patch_size, expert.channels) == (14, 1024)
