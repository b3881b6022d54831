"""CLIP experts through open_clip: any grid, open_clip's own checkpoint loading, frozen pos-embeds."""

from __future__ import annotations

import copy

import open_clip
import pytest
import torch

from tiger.experts import ExpertWeightsError, build_expert
from tiger.experts.base import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from tiger.experts.clip import CLIP_TINY, ClipExpert
from tiger.options import OptionError


@pytest.fixture
def tiny_clip() -> open_clip.CLIP:
    """A whole tiny open_clip CLIP (image and text towers) with seeded random weights."""
    torch.manual_seed(7)
    return open_clip.create_model(CLIP_TINY.arch, **copy.deepcopy(CLIP_TINY.overrides)).eval()


@pytest.mark.parametrize("grid", [(3, 4), (2, 2)])
def test_features_have_the_grid_shape(grid: tuple[int, int], images: torch.Tensor) -> None:
    expert = build_expert("clip_tiny")
    features = expert(images, grid)
    assert features.shape == (2, 32, *grid)
    assert torch.isfinite(features).all()
    assert (expert.patch_size, expert.channels) == (16, 32)
    assert expert.mean == OPENAI_CLIP_MEAN and expert.std == OPENAI_CLIP_STD


def test_native_grid_matches_open_clip_forward_intermediates(images: torch.Tensor) -> None:
    expert = build_expert("clip_tiny", seed=3)
    grid = expert.backbone.grid_size  # (14, 14): no position-embedding resampling
    pixels = torch.nn.functional.interpolate(images, size=(224, 224), mode="bilinear")
    pixels = (pixels - expert.pixel_mean) / expert.pixel_std
    reference = expert.backbone.forward_intermediates(
        pixels, indices=1, normalize_intermediates=True, intermediates_only=True
    )["image_intermediates"][0]
    torch.testing.assert_close(expert(images.clone(), grid), reference, atol=1e-5, rtol=1e-5)


def test_other_grids_leave_the_stored_position_embedding_alone(images: torch.Tensor) -> None:
    expert = build_expert("clip_tiny")
    before = {key: value.clone() for key, value in expert.state_dict().items()}
    expert(images, (3, 5))
    after = expert.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(before[key], after[key]) for key in before)
    assert expert.backbone.positional_embedding.shape == (14 * 14 + 1, 32)


def test_checkpoint_file_loads_through_open_clip(tiny_clip, tmp_path, images: torch.Tensor) -> None:
    path = tmp_path / "tiny_clip.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tiny_clip.state_dict().items()}}, path)
    loaded = build_expert("clip_tiny", weights=str(path), seed=123)
    reference = ClipExpert(tiny_clip.visual, name="clip_tiny", identity={})
    assert torch.equal(loaded(images, (3, 4)), reference(images, (3, 4)))
    assert not torch.allclose(build_expert("clip_tiny", seed=123)(images, (3, 4)), reference(images, (3, 4)))
    assert loaded.identity == {
        "name": "clip_tiny",
        "weights": str(path.resolve()),
        "seed": 123,
        "pos_embed_antialias": True,
    }


def test_hf_hub_style_folder_loads(tiny_clip, tmp_path, images: torch.Tensor) -> None:
    torch.save(tiny_clip.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    loaded = build_expert("clip_tiny", weights=str(tmp_path))
    reference = ClipExpert(tiny_clip.visual, name="clip_tiny", identity={})
    assert torch.equal(loaded(images, (2, 2)), reference(images, (2, 2)))


def test_seed_makes_random_init_deterministic(images: torch.Tensor) -> None:
    first, again, other = (build_expert("clip_tiny", seed=s)(images, (2, 2)) for s in (1, 1, 2))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_wrong_checkpoint_is_a_weights_error(tmp_path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"visual.conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(ExpertWeightsError, match="other.pt"):
        build_expert("clip_tiny", weights=str(path))


def test_unknown_tag_lists_the_tags() -> None:
    with pytest.raises(ExpertWeightsError, match="openai"):
        build_expert("clip_b16", weights="no_such_tag")


def test_offline_default_weights_say_how_to_get_them(hub_offline, tmp_path) -> None:
    with pytest.raises(ExpertWeightsError) as info:
        build_expert("clip_b16")
    message = str(info.value)
    assert "ViT-B-16-quickgelu" in message and "'openai'" in message and "experts.<role>.weights=" in message
    assert f"cached under {tmp_path / 'hf_cache'}" in message  # the hub's real cache ($HF_HOME), not ~/.cache
    assert info.value.__cause__ is None


def test_position_table_is_resized_as_open_clip_resizes_it(tiny_clip, tmp_path, images) -> None:
    path = tmp_path / "tiny_clip.bin"
    torch.save(tiny_clip.state_dict(), path)
    grid = (3, 4)  # 14x14 table downsampled, where antialiasing matters most
    overrides = copy.deepcopy(CLIP_TINY.overrides)
    overrides["vision_cfg"]["image_size"] = [48, 64]
    resized = open_clip.create_model(CLIP_TINY.arch, **overrides).eval()
    open_clip.load_checkpoint(resized, str(path))  # open_clip's resize_pos_embed (bicubic, antialias)
    pixels = torch.nn.functional.interpolate(images, size=(48, 64), mode="bilinear")
    pixels = (pixels - torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(OPENAI_CLIP_STD).view(
        1, 3, 1, 1
    )
    with torch.no_grad():
        reference = resized.visual.forward_intermediates(
            pixels, indices=1, normalize_intermediates=True, intermediates_only=True
        )["image_intermediates"][0]
    expert = build_expert("clip_tiny", weights=str(path))
    assert expert.pos_embed_antialias and expert.identity["pos_embed_antialias"]  # the default
    torch.testing.assert_close(expert(images, grid), reference, atol=1e-5, rtol=1e-5)
    plain = build_expert("clip_tiny", weights=str(path), pos_embed_antialias=False)
    assert (plain(images, grid) - reference).abs().max() > 1e-3  # plain bicubic is another convention
    native = expert.backbone.grid_size  # no resizing: the option changes nothing
    assert torch.equal(plain(images, native), expert(images, native))
    with pytest.raises(OptionError, match=r"^pos_embed_antialias must be true or false, got 'no'"):
        build_expert("clip_tiny", pos_embed_antialias="no")


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::FutureWarning")
def test_openai_torchscript_file_names_the_open_clip_file(tiny_clip, tmp_path) -> None:
    path = tmp_path / "ViT-B-16.pt"  # OpenAI's release files are TorchScript archives
    torch.jit.trace(tiny_clip.visual, torch.rand(1, 3, 224, 224), check_trace=False).save(str(path))
    with pytest.raises(ExpertWeightsError) as info:
        build_expert("clip_b16", weights=str(path))
    message = str(info.value)
    assert "TorchScript" in message and "ViT-B-16.pt" in message and "weights_only=False" in message
    assert "hf download timm/vit_base_patch16_clip_224.openai open_clip_pytorch_model.bin" in message
    assert info.value.__cause__ is None


def test_real_clip_b16_architecture_without_weights() -> None:
    expert = build_expert("clip_b16", weights=None)
    # ViT-B/16 visual tower of OpenAI CLIP, 86,192,640 parameters, minus the unused 768x512 projection
    assert sum(p.numel() for p in expert.parameters()) == 86_192_640 - 768 * 512
    assert (expert.patch_size, expert.channels) == (16, 768)
