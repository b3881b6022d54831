"""Experts from any callable, the Hydra way (``_target_``): wrapped plain modules, callables that return an
expert, the identity a checkpoint stores, and the errors that name what is wrong."""

from __future__ import annotations

import io
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from tiger.experts import Expert, ModuleExpert, build_expert
from tiger.experts.base import IMAGENET_MEAN, IMAGENET_STD
from tiger.options import OptionError

CONF = Path(__file__).resolve().parents[2] / "conf"
WRAPPING = {"patch_size": 8, "channels": 6, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}

USER_MODULE = """
    from torch import nn

    from tiger.experts import ModuleExpert


    def strided_conv(width=6):
        return nn.Conv2d(3, width, 8, stride=8)


    def two_maps(width=6):
        class TwoMaps(nn.Module):
            def __init__(self):
                super().__init__()
                self.early = nn.Conv2d(3, 3, 4, stride=4)
                self.late = nn.Conv2d(3, width, 2, stride=2)

            def forward(self, x):
                early = self.early(x)
                return [early, self.late(early)]

        return TwoMaps()


    def ready_expert(width=6):
        return ModuleExpert(strided_conv(width), name="ready", patch_size=8, channels=width,
                            mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), identity={})


    def not_a_module():
        return "features"
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch) -> str:
    """A module of the user's, outside the package, importable as ``user_backbones``."""
    (tmp_path / "user_backbones.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "user_backbones", raising=False)
    return "user_backbones"


def test_a_plain_module_is_wrapped_frozen_and_its_identity_rebuilds_it(user_module, images) -> None:
    expert = build_expert(_target_=f"{user_module}.strided_conv", width=6, seed=3, **WRAPPING)
    assert isinstance(expert, ModuleExpert)
    assert (expert.name, expert.patch_size, expert.channels) == ("strided_conv", 8, 6)
    assert expert.mean == IMAGENET_MEAN and expert.std == IMAGENET_STD
    assert not expert.training and not any(p.requires_grad for p in expert.parameters())
    features = expert(images, (2, 3))
    assert features.shape == (2, 6, 2, 3)
    assert expert.identity == {"_target_": f"{user_module}.strided_conv", "width": 6, "name": "strided_conv",
                               "seed": 3, **WRAPPING}  # fmt: skip
    buffer = io.BytesIO()
    torch.save(expert.identity, buffer)  # plain data: what a checkpoint stores
    buffer.seek(0)
    stored = torch.load(buffer, weights_only=True)
    assert torch.equal(build_expert(**stored)(images, (2, 3)), features)
    other_seed = build_expert(**{**stored, "seed": 4})
    assert not torch.equal(other_seed(images, (2, 3)), features)


def test_the_last_of_several_maps_is_the_expert_output(user_module, images) -> None:
    expert = build_expert(_target_=f"{user_module}.two_maps", **WRAPPING)
    assert expert(images, (2, 3)).shape == (2, 6, 2, 3)


def test_a_torchvision_feature_extractor_with_a_nested_target(images) -> None:
    expert = build_expert(
        _target_="torchvision.models.feature_extraction.create_feature_extractor",
        model={"_target_": "torchvision.models.resnet18", "weights": None},
        return_nodes=["layer2"],
        name="resnet_layer2",
        **{**WRAPPING, "channels": 128},
    )
    assert expert.name == "resnet_layer2"
    assert expert(images, (2, 3)).shape == (2, 128, 2, 3)
    assert expert.identity["model"] == {"_target_": "torchvision.models.resnet18", "weights": None}


def test_the_shipped_timm_example_is_an_expert_at_its_stride() -> None:
    (role, spec), *_ = yaml.safe_load((CONF / "experts" / "timm_resnet18.yaml").read_text()).items()
    expert = build_expert(**spec)
    assert (expert.patch_size, expert.channels) == (32, 512)
    assert expert(torch.rand(1, 3, 40, 50), (2, 3)).shape == (1, 512, 2, 3)


def test_a_callable_that_returns_an_expert_is_named_and_identified_by_its_spec(user_module, images) -> None:
    expert = build_expert(_target_=f"{user_module}.ready_expert", name="mine", width=4)
    assert isinstance(expert, Expert) and expert.name == "mine" and expert.channels == 4
    assert expert.identity == {
        "_target_": f"{user_module}.ready_expert",
        "width": 4,
        "name": "mine",
        "seed": 0,
    }
    assert torch.equal(build_expert(**expert.identity)(images, (2, 3)), expert(images, (2, 3)))
    with pytest.raises(OptionError, match="^patch_size is not used: .*returns a tiger.experts.Expert"):
        build_expert(_target_=f"{user_module}.ready_expert", patch_size=8)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"patch_size": None}, r"^patch_size is required: .*strided_conv returns a plain Conv2d"),
        ({"channels": None, "mean": None}, r"^channels is required: .*\(missing: channels, mean\)"),
        ({"patch_size": 0}, "^patch_size must be >= 1, got 0"),
        ({"std": [0.2, 0.0, 0.2]}, "^std must be > 0, got 0.0"),
        ({"mean": [0.5, 0.5]}, r"^mean must be 3 numbers \(one per RGB channel\)"),
        ({"_target_": "strided_conv"}, "^_target_ must be the dotted path of a callable"),
    ],
)
def test_bad_wrapping_keys_are_named(user_module, changes, message) -> None:
    spec = {"_target_": f"{user_module}.strided_conv", **WRAPPING, **changes}
    with pytest.raises(OptionError, match=message):
        build_expert(**{key: value for key, value in spec.items() if value is not None})


def test_a_callable_that_returns_no_module_is_refused(user_module) -> None:
    with pytest.raises(
        TypeError, match=r"user_backbones.not_a_module returned a str, not a tiger.experts.Expert"
    ):
        build_expert(_target_=f"{user_module}.not_a_module")


def test_a_module_that_cannot_be_imported_is_named() -> None:
    with pytest.raises(ModuleNotFoundError, match="module 'gone_backbones' cannot be imported") as caught:
        build_expert(_target_="gone_backbones.make", name="mine")
    assert caught.value.name == "gone_backbones"
    assert "put the folder that holds it on PYTHONPATH" in str(caught.value)


def test_a_wrong_output_size_names_channels_and_stride(user_module, images) -> None:
    expert = build_expert(_target_=f"{user_module}.strided_conv", **{**WRAPPING, "patch_size": 4})
    with pytest.raises(RuntimeError, match=r"shape \(2, 6, 1, 1\), expected \(2, 6, 2, 3\).*patch size 4"):
        expert(images, (2, 3))


def test_a_plain_module_instance_is_any_feature_extractor(images) -> None:
    expert = ModuleExpert(nn.Conv2d(3, 5, 4, stride=4), name="conv", patch_size=4, channels=5,
                          mean=IMAGENET_MEAN, std=IMAGENET_STD, identity={})  # fmt: skip
    assert expert(images, (3, 4)).shape == (2, 5, 3, 4)
