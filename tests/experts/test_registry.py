"""Expert registry: names, unknown names, and rebuilding an expert from its identity."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from tiger.experts import Expert, build_expert, known_experts, register_expert


def test_known_experts() -> None:
    assert {
        "clip_b16",
        "clip_l14",
        "dinov2_b14",
        "dinov2_l14",
        "sam_b",
        "owlv2_l14",
        "clip_tiny",
        "dinov2_tiny",
        "sam_tiny",
        "owlv2_tiny",
    } <= set(known_experts())  # and whatever modules have registered (register_expert)


def test_unknown_name_lists_the_known_names() -> None:
    with pytest.raises(ValueError, match=r"unknown expert 'dino'.*'dinov2_l14'.*timm:<model_name>"):
        build_expert("dino")


def test_unknown_option_names_it() -> None:
    with pytest.raises(TypeError, match="neck"):
        build_expert("clip_tiny", neck=False)


@pytest.mark.parametrize("name", ["clip_tiny", "dinov2_tiny", "sam_tiny", "owlv2_tiny"])
def test_identity_rebuilds_the_same_expert(name: str, images: torch.Tensor) -> None:
    expert = build_expert(name, seed=17)
    assert expert.identity["name"] == name and expert.identity["weights"] == "default"
    rebuilt = build_expert(**expert.identity)
    assert torch.equal(rebuilt(images, (2, 3)), expert(images, (2, 3)))


def test_relative_weights_path_is_stored_absolute(tmp_path, monkeypatch, images: torch.Tensor) -> None:
    saved = build_expert("dinov2_tiny", seed=8)
    saved.backbone.save_pretrained(tmp_path / "dino")
    monkeypatch.chdir(tmp_path)
    expert = build_expert("dinov2_tiny", weights="./dino")
    assert expert.identity["weights"] == str((tmp_path / "dino").resolve())
    monkeypatch.chdir("/")
    assert torch.equal(build_expert(**expert.identity)(images, (2, 2)), saved(images, (2, 2)))


USER_MODULE = """
    import torch
    from torch import nn

    from tiger.experts import ModuleExpert, register_expert
    from tiger.experts.base import IMAGENET_MEAN, IMAGENET_STD


    @register_expert
    def user_patches(weights=None, width=6, **options):
        backbone = nn.Conv2d(3, width, 8, stride=8)
        torch.nn.init.constant_(backbone.weight, 0.01)
        torch.nn.init.zeros_(backbone.bias)
        return ModuleExpert(backbone, name="user_patches", patch_size=8, channels=width, mean=IMAGENET_MEAN,
                      std=IMAGENET_STD, identity={"name": "user_patches", "weights": weights, "width": width})
"""


def test_an_expert_registered_by_a_users_module(tmp_path, monkeypatch, images: torch.Tensor) -> None:
    (tmp_path / "my_experts.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_experts", raising=False)
    expert = build_expert("user_patches", module="my_experts", width=5)
    assert expert.identity == {
        "name": "user_patches",
        "weights": "default",
        "width": 5,
        "module": "my_experts",
    }
    assert "user_patches" in known_experts()
    rebuilt = build_expert(**expert.identity)
    assert torch.equal(rebuilt(images, (2, 3)), expert(images, (2, 3)))
    with pytest.raises(
        ModuleNotFoundError, match="expert 'user_patches' is registered by module 'gone_module'"
    ):
        build_expert("user_patches", module="gone_module")


def test_registering_a_taken_name_or_returning_no_expert_is_refused() -> None:
    with pytest.raises(ValueError, match="'clip_tiny' is a built-in expert"):
        register_expert(lambda weights=None: None, name="clip_tiny")

    @register_expert(name="test_not_an_expert")
    def builder(weights=None):
        return torch.nn.Identity()

    with pytest.raises(TypeError, match="returned a Identity, not a tiger.experts.Expert"):
        build_expert("test_not_an_expert")
    with pytest.raises(ValueError, match="already registered by"):
        register_expert(lambda weights=None: None, name="test_not_an_expert")
    assert isinstance(build_expert("clip_tiny"), Expert)
