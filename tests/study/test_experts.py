"""The known-answer study's experts: pretrained specialists (deterministic, cached) and distractors."""

from __future__ import annotations

import pytest
import torch

from tiger.experts import ExpertWeightsError, build_expert
from tiger.study.experts import STUDY_GEOMETRY, cache_dir, pretrain_encoder

MODULE = "tiger.study.experts"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TIGER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "study_experts"


def test_specialist_is_pretrained_once_cached_and_deterministic(cache) -> None:
    assert cache_dir() == cache
    first = build_expert("study_geometry", module=MODULE, pretrain_steps=3)
    (path,) = cache.glob("study_geometry-*.pt")
    stamp = path.stat().st_mtime_ns
    again = build_expert("study_geometry", module=MODULE, pretrain_steps=3)
    assert path.stat().st_mtime_ns == stamp  # loaded, not pretrained again
    untrained = build_expert("study_geometry", module=MODULE, weights=None)
    for key, value in first.backbone.state_dict().items():
        torch.testing.assert_close(again.backbone.state_dict()[key], value)
    assert any(
        not torch.equal(value, untrained.backbone.state_dict()[key])
        for key, value in first.backbone.state_dict().items()
    )
    # rebuilt from the seed alone: the same weights bit for bit; another seed gives others
    rebuilt = pretrain_encoder(STUDY_GEOMETRY, seed=0, channels=8, steps=3)
    other = pretrain_encoder(STUDY_GEOMETRY, seed=1, channels=8, steps=3)
    for key, value in first.backbone.state_dict().items():
        assert torch.equal(rebuilt[key], value)
    assert any(not torch.equal(other[key], value) for key, value in rebuilt.items())
    # a named file loads too
    named = build_expert("study_geometry", module=MODULE, weights=str(path), pretrain_steps=3)
    assert torch.equal(named.backbone.layers[0].weight, first.backbone.layers[0].weight)
    assert named.identity["weights"] == str(path) and first.identity["name"] == "study_geometry"


def test_specialist_features_depend_on_the_image_and_distractors_do_not(cache) -> None:
    torch.manual_seed(0)
    images = torch.rand(2, 3, 64, 80)
    specialist = build_expert(module=MODULE, name="study_boundary", weights=None)
    features = specialist(images, (4, 5))
    assert features.shape == (2, 8, 4, 5) and not specialist.training
    assert not torch.allclose(features[0], features[1])  # two images, two feature maps
    torch.testing.assert_close(specialist(images, (4, 5)), features)  # deterministic
    for name, scale in (("study_noise", 1.0), ("study_loud", 100.0)):
        distractor = build_expert(name, module=MODULE)
        same = torch.rand(1, 3, 64, 80).expand(2, -1, -1, -1)
        a = distractor(same, (8, 10))
        b = distractor(torch.zeros(2, 3, 64, 80), (8, 10))
        # noise drawn afresh: the same image twice gives unrelated features, of the stated scale
        assert not torch.allclose(a[0], a[1])
        assert a.std().item() == pytest.approx(scale, rel=0.2) and b.std().item() == pytest.approx(
            scale, rel=0.2
        )
        assert list(distractor.parameters()) == []


def test_bad_study_weights_are_clear_errors(cache, tmp_path) -> None:
    with pytest.raises(ExpertWeightsError, match="study_noise.*has no weights"):
        build_expert(module=MODULE, name="study_noise", weights="/some/file.pt")
    with pytest.raises(ExpertWeightsError, match="not found"):
        build_expert("study_geometry", module=MODULE, weights=str(tmp_path / "missing.pt"))
    wrong = tmp_path / "wrong.pt"
    torch.save({"layers.0.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ExpertWeightsError, match="not a study encoder of this shape"):
        build_expert("study_geometry", module=MODULE, weights=str(wrong))
    with pytest.raises(ValueError, match="channels and pretrain_steps must be >= 1"):
        build_expert("study_geometry", module=MODULE, channels=0)
