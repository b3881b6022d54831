"""SAM image-encoder experts: any grid, SAM-format state dicts, the official vit_b architecture."""

from __future__ import annotations

import pytest
import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from tiger.experts import ExpertWeightsError, build_expert
from tiger.experts.base import IMAGENET_MEAN, IMAGENET_STD
from tiger.experts.sam import SAM_TINY, SamExpert, build_sam_image_encoder


@pytest.fixture
def tiny_sam() -> Sam:
    """A whole tiny ``Sam`` (encoder, prompt encoder, mask decoder) with seeded random weights."""
    torch.manual_seed(11)
    out, grid = SAM_TINY.out_chans, SAM_TINY.image_size // SAM_TINY.patch_size
    encoder = build_sam_image_encoder(SAM_TINY)
    torch.nn.init.normal_(encoder.pos_embed, std=0.5)  # SAM inits it to zeros: make resampling matter
    return Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=out,
            image_embedding_size=(grid, grid),
            input_image_size=(SAM_TINY.image_size, SAM_TINY.image_size),
            mask_in_chans=4,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=out, mlp_dim=32, num_heads=2),
            transformer_dim=out,
            iou_head_depth=1,
            iou_head_hidden_dim=16,
        ),
    ).eval()


@pytest.mark.parametrize("grid", [(3, 4), (2, 2)])
@pytest.mark.parametrize("neck, channels", [(True, 24), (False, 32)])
def test_features_have_the_grid_shape(grid: tuple[int, int], neck: bool, channels: int, images) -> None:
    expert = build_expert("sam_tiny", neck=neck)
    features = expert(images, grid)
    assert features.shape == (2, channels, *grid)
    assert torch.isfinite(features).all()
    assert (expert.patch_size, expert.channels) == (16, channels)
    assert expert.mean == IMAGENET_MEAN and expert.std == IMAGENET_STD


def test_native_grid_matches_the_segment_anything_encoder(tiny_sam: Sam, images: torch.Tensor) -> None:
    expert = SamExpert(tiny_sam.image_encoder, name="sam_tiny", identity={})
    pixels = torch.nn.functional.interpolate(images, size=(128, 128), mode="bilinear")
    pixels = (pixels - expert.pixel_mean) / expert.pixel_std
    with torch.no_grad():
        reference = tiny_sam.image_encoder(pixels)
    torch.testing.assert_close(expert(images, (8, 8)), reference, atol=1e-5, rtol=1e-5)


def test_whole_sam_state_dict_gives_the_saved_features(tiny_sam: Sam, tmp_path, images: torch.Tensor) -> None:
    path = tmp_path / "sam_tiny.pth"
    torch.save(tiny_sam.state_dict(), path)  # the layout of the official sam_vit_b_01ec64.pth
    loaded = build_expert("sam_tiny", weights=str(path))
    reference = SamExpert(tiny_sam.image_encoder, name="sam_tiny", identity={})
    assert torch.equal(loaded(images, (3, 5)), reference(images, (3, 5)))
    assert not torch.allclose(build_expert("sam_tiny")(images, (3, 5)), reference(images, (3, 5)))
    assert loaded.identity == {
        "name": "sam_tiny",
        "weights": str(path.resolve()),
        "seed": 0,
        "neck": True,
        "pos_embed_antialias": True,
    }


def test_encoder_only_state_dict_loads(tiny_sam: Sam, tmp_path, images: torch.Tensor) -> None:
    path = tmp_path / "encoder.pth"
    torch.save(tiny_sam.image_encoder.state_dict(), path)
    loaded = build_expert("sam_tiny", weights=str(path), neck=False)
    tiny_sam.image_encoder.neck = torch.nn.Identity()
    reference = SamExpert(tiny_sam.image_encoder, name="sam_tiny", identity={}, neck=False)
    assert torch.equal(loaded(images, (2, 3)), reference(images, (2, 3)))


def test_other_grids_leave_the_stored_position_embedding_alone(tiny_sam: Sam, images: torch.Tensor) -> None:
    expert = SamExpert(tiny_sam.image_encoder, name="sam_tiny", identity={})
    before = expert.backbone.pos_embed.clone()
    expert(images, (3, 5))
    assert torch.equal(expert.backbone.pos_embed, before)


@pytest.mark.parametrize("antialias", [True, False])
def test_position_table_is_resized_bicubic_with_the_chosen_antialiasing(
    tiny_sam: Sam, antialias, images
) -> None:
    encoder = tiny_sam.image_encoder
    expert = SamExpert(encoder, name="sam_tiny", identity={}, pos_embed_antialias=antialias)
    grid = (3, 5)  # the 8x8 table downsampled, as SAM's 64x64 is at the NYUD grid
    pixels = torch.nn.functional.interpolate(images, size=(48, 80), mode="bilinear")
    pixels = (pixels - expert.pixel_mean) / expert.pixel_std
    tables = {
        flag: torch.nn.functional.interpolate(
            encoder.pos_embed.permute(0, 3, 1, 2),
            size=grid,
            mode="bicubic",
            antialias=flag,
            align_corners=False,
        ).permute(0, 2, 3, 1)
        for flag in (True, False)
    }
    assert (tables[True] - tables[False]).abs().max() > 1e-2  # the two conventions differ here
    with torch.no_grad():
        x = encoder.patch_embed(pixels) + tables[antialias]
        for block in encoder.blocks:
            x = block(x)
        reference = encoder.neck(x.permute(0, 3, 1, 2))
    torch.testing.assert_close(expert(images, grid), reference, atol=1e-5, rtol=1e-5)


def test_antialiased_resizing_is_the_default_and_part_of_the_identity() -> None:
    expert = build_expert("sam_tiny")
    assert expert.pos_embed_antialias is True and expert.identity["pos_embed_antialias"] is True
    assert build_expert(**{**expert.identity, "pos_embed_antialias": False}).pos_embed_antialias is False


def test_wrong_state_dict_names_file_and_keys(tmp_path) -> None:
    path = tmp_path / "not_sam.pth"
    torch.save({"image_encoder.pos_embed": torch.zeros(1, 2, 2, 32)}, path)
    with pytest.raises(
        ExpertWeightsError,
        match=r"(?s)not_sam.pth.*Missing key\(s\).*blocks.*size mismatch for pos_embed: .*"
        r"torch.Size\(\[1, 2, 2, 32\]\) from checkpoint, "
        r"the shape in current model is torch.Size\(\[1, 8, 8, 32\]\)",
    ):
        build_expert("sam_tiny", weights=str(path))


def test_missing_file_names_it_and_the_official_url(tmp_path) -> None:
    missing = tmp_path / "sam_vit_b_01ec64.pth"
    with pytest.raises(
        ExpertWeightsError, match=r"sam_vit_b_01ec64.pth' does not exist.*dl.fbaipublicfiles.com"
    ):
        build_expert("sam_b", weights=str(missing))


def test_offline_default_is_a_clear_error(hub_offline) -> None:
    with pytest.raises(
        ExpertWeightsError, match="not cached.*https://dl.fbaipublicfiles.com/.*sam_vit_b_01ec64"
    ):
        build_expert("sam_b")


def test_sam_b_is_the_official_vit_b_image_encoder() -> None:
    with torch.device("meta"):  # shapes only
        expert = build_expert("sam_b", weights=None)
        official = sam_model_registry["vit_b"]().image_encoder.state_dict()
    ours = expert.backbone.state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in official.items()}
    assert sum(p.numel() for p in expert.parameters()) == 89_670_912  # SAM ViT-B image encoder
    assert (expert.patch_size, expert.channels) == (16, 256)
