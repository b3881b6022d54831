"""The known-answer study's experts: pretrained specialists (deterministic, cached) and distractors."""

from __future__ import annotations

import pytest
import torch

from tiger.experts import ExpertWeightsError, build_expert
from tiger.study.experts import DESIGNED, SPECS, cache_dir, pretrain_encoder
from tiger.study.scenes import CUE_CHANNELS

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
    rebuilt = pretrain_encoder(SPECS["study_geometry"], seed=0, channels=8, steps=3)
    other = pretrain_encoder(SPECS["study_geometry"], seed=1, channels=8, steps=3)
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
    features = specialist(images, (8, 10))
    assert features.shape == (2, 8, 8, 10) and not specialist.training and specialist.patch_size == 8
    assert not torch.allclose(features[0], features[1])  # two images, two feature maps
    torch.testing.assert_close(specialist(images, (8, 10)), features)  # deterministic
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


@pytest.mark.parametrize(
    "name", ["study_semantics", "study_geometry", "study_geometry_twin", "study_boundary"]
)
def test_a_specialist_reads_its_own_channel_only(name) -> None:
    specialist = build_expert(name, module=MODULE, weights=None)
    channel = CUE_CHANNELS[SPECS[name].cue]
    images = torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    other = images.clone()
    other[:, [c for c in range(3) if c != channel]] = torch.rand(2, 2, 64, 80)  # the other channels change
    torch.testing.assert_close(specialist(other, (8, 10)), specialist(images, (8, 10)))
    changed = images.clone()
    changed[:, channel] = 1.0 - changed[:, channel]
    assert not torch.allclose(specialist(changed, (8, 10)), specialist(images, (8, 10)))


def test_the_twin_is_another_encoder_of_the_same_channel() -> None:
    geometry = build_expert("study_geometry", module=MODULE, weights=None)
    twin = build_expert("study_geometry_twin", module=MODULE, weights=None)
    assert twin.identity["seed"] != geometry.identity["seed"]
    assert twin.backbone.layers[0].weight.shape != geometry.backbone.layers[0].weight.shape  # another width
    assert twin.backbone.cue_channel == geometry.backbone.cue_channel
    assert DESIGNED["depth"] == ("study_geometry", "study_geometry_twin") == DESIGNED["normals"]
