"""timm models as experts by name: ``timm:<model_name>`` with any grid and timm's own checkpoint loading."""

from __future__ import annotations

import pytest
import timm
import torch

from tiger.experts import ExpertWeightsError, build_expert

VIT = "vit_tiny_patch16_224"
SMALL = {"depth": 2, "embed_dim": 64, "num_heads": 2}  # timm's random init is slow on CPU: keep it small


@pytest.fixture(scope="module")
def vit_expert():
    return build_expert(f"timm:{VIT}", weights=None, seed=1, model_kwargs=SMALL)


@pytest.mark.parametrize("grid", [(3, 4), (2, 2)])
def test_features_have_the_grid_shape(vit_expert, grid: tuple[int, int], images: torch.Tensor) -> None:
    features = vit_expert(images, grid)
    assert features.shape == (2, 64, *grid)
    assert torch.isfinite(features).all()
    assert (vit_expert.name, vit_expert.patch_size, vit_expert.channels) == (f"timm:{VIT}", 16, 64)
    assert vit_expert.mean == (0.5, 0.5, 0.5)  # read from the model's pretrained config


def test_features_are_timm_forward_intermediates(vit_expert, images: torch.Tensor) -> None:
    torch.manual_seed(1)
    model = timm.create_model(VIT, pretrained=False, num_classes=0, dynamic_img_size=True, **SMALL).eval()
    model.load_state_dict(vit_expert.backbone.state_dict())
    pixels = torch.nn.functional.interpolate(images, size=(48, 80), mode="bilinear")
    with torch.no_grad():
        (reference,) = model.forward_intermediates(
            (pixels - 0.5) / 0.5, indices=1, norm=True, intermediates_only=True
        )
    torch.testing.assert_close(vit_expert(images, (3, 5)), reference, atol=1e-5, rtol=1e-5)


def test_checkpoint_file_gives_the_saved_features(vit_expert, tmp_path, images: torch.Tensor) -> None:
    torch.manual_seed(3)
    model = timm.create_model(
        VIT, pretrained=False, **SMALL
    )  # with its classifier head, as timm checkpoints are
    path = tmp_path / "vit_tiny.pth"
    torch.save(model.state_dict(), path)
    loaded = build_expert(f"timm:{VIT}", weights=str(path), seed=42, model_kwargs=SMALL)
    assert all(
        torch.equal(value, model.state_dict()[key]) for key, value in loaded.backbone.state_dict().items()
    )
    assert not torch.allclose(loaded(images, (3, 4)), vit_expert(images, (3, 4)))
    again = build_expert(**loaded.identity)
    assert torch.equal(again(images, (3, 4)), loaded(images, (3, 4)))


def test_a_convnet_works_too(images: torch.Tensor) -> None:
    expert = build_expert("timm:resnet18", weights=None)
    assert (expert.patch_size, expert.channels) == (32, 512)
    assert expert(images, (1, 1)).shape == (2, 512, 1, 1)


def test_unknown_model_and_missing_weights(tmp_path) -> None:
    wrong = tmp_path / "wrong.pth"
    torch.save({"blocks.0.norm1.weight": torch.ones(3)}, wrong)
    with pytest.raises(ValueError, match="unknown timm model 'no_such_net'"):
        build_expert("timm:no_such_net")
    with pytest.raises(ExpertWeightsError, match="no pretrained weights"):
        build_expert(f"timm:{VIT}.no_such_tag")
    with pytest.raises(ExpertWeightsError, match="wrong.pth' is not a checkpoint of timm model"):
        build_expert(f"timm:{VIT}", weights=str(wrong), model_kwargs=SMALL)
    with pytest.raises(ExpertWeightsError, match="missing.pth' does not exist"):
        build_expert(f"timm:{VIT}", weights="/no/such/dir/missing.pth", model_kwargs=SMALL)


def test_offline_default_weights_are_a_clear_error(hub_offline) -> None:
    with pytest.raises(ExpertWeightsError, match=f"timm.create_model\\('{VIT}', pretrained=True\\)") as info:
        build_expert(f"timm:{VIT}", model_kwargs=SMALL)
    assert info.value.__cause__ is None
