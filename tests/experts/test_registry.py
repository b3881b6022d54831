"""Expert registry: names, unknown names, and rebuilding an expert from its identity."""

from __future__ import annotations

import pytest
import torch

from tiger.experts import build_expert, known_experts


def test_known_experts() -> None:
    assert set(known_experts()) == {
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
        "study_semantics",
        "study_geometry",
        "study_boundary",
        "study_noise",
        "study_loud",
    }


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
