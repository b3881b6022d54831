"""Building TIGER from its config and from a checkpoint, with experts of the user's own: a ``_target_`` spec
is named by its role, trained end to end, stored as plain data and rebuilt; a module that is not importable
where a checkpoint is loaded is named with its role and what to do."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from tiger.inference import load_model
from tiger.model import TigerConfig
from tiger.model.build import build_tiger
from tiger.model.checkpoint import CheckpointError, read_checkpoint
from tiger.predict import main as predict_main

USER_MODULE = '''
    """A user's own backbone, outside the tiger package."""
    from torch import nn


    def small_cnn(width=8):
        """Two stride-4 convolutions: normalised images (B, 3, H, W) -> (B, width, H / 16, W / 16)."""
        first, second = nn.Conv2d(3, width, 4, stride=4), nn.Conv2d(width, width, 4, stride=4)
        return nn.Sequential(first, nn.GELU(), second)
'''
USER_EXPERT = (
    "+experts.mine={_target_: user_cnn.small_cnn, width: 8, patch_size: 16, channels: 8, "
    "mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}"
)
TRAIN = (
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "trainer.enable_progress_bar=false",
    "data.datamodule.synthetic.num_train=4",
    "data.datamodule.synthetic.num_val=2",
    "data.datamodule.batch_size=2",
    "data.datamodule.eval_batch_size=2",
    "data.tasks=[semseg,depth]",
    "callbacks.model_checkpoint.every_n_train_steps=2",
    "final_report=false",
)


def test_a_target_expert_is_named_by_its_role_and_built(tiny_config) -> None:
    spec = {"_target_": "torch.nn.Conv2d", "in_channels": 3, "out_channels": 4, "kernel_size": 8, "stride": 8,
            "patch_size": 8, "channels": 4, "mean": [0.5] * 3, "std": [0.5] * 3}  # fmt: skip
    config = tiny_config(experts={"conv": spec, "clip": {"name": "clip_tiny"}})
    assert config.experts["conv"] == {**spec, "name": "conv"}
    model = build_tiger(config)
    assert model.expert_names == ["conv", "clip_tiny"]
    assert model.experts[0].identity == {**spec, "name": "conv", "seed": 0}
    named = tiny_config(experts={"conv": {**spec, "name": "patches"}})
    assert named.experts["conv"]["name"] == "patches"


def test_an_expert_whose_module_is_missing_names_its_role(tiny_config) -> None:
    config = tiny_config(experts={"mine": {"_target_": "gone_backbones.make"}})
    with pytest.raises(ModuleNotFoundError, match="^expert role 'mine': .*module 'gone_backbones' cannot be"):
        build_tiger(config)


@pytest.fixture
def user_cnn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``user_cnn.py`` in a folder of its own, on sys.path (as PYTHONPATH would put it)."""
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / "user_cnn.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "user_cnn", raising=False)
    return folder


def test_user_experts_train_end_to_end_and_their_checkpoint_rebuilds_them(
    compose_train, user_cnn: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from tiger.train import train

    cfg = compose_train("experts=timm_resnet18", USER_EXPERT, *TRAIN, output_dir=tmp_path / "run")
    results = train(cfg)
    GlobalHydra.instance().clear()
    checkpoint = Path(results["checkpoint"])
    identities = read_checkpoint(checkpoint)["tiger"]["experts"]
    assert [(i["_target_"], i["name"]) for i in identities] == [
        ("timm.create_model", "resnet18"),
        ("user_cnn.small_cnn", "mine"),
    ]

    # a fresh session where the user's module is not importable: the error says which, where, what to do
    monkeypatch.delitem(sys.modules, "user_cnn")
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if entry != str(user_cnn)])
    with pytest.raises(ModuleNotFoundError) as missing:
        load_model(checkpoint)
    message = str(missing.value)
    assert missing.value.name == "user_cnn"
    for part in (str(checkpoint), "expert role 'mine'", "module 'user_cnn' cannot be imported", "PYTHONPATH"):
        assert part in message, (part, message)
    image_file = tmp_path / "photo.png"
    Image.fromarray(np.zeros((48, 60, 3), np.uint8)).save(image_file)
    assert predict_main([str(checkpoint), str(image_file), "--out", str(tmp_path / "out")]) == 2
    assert f"error: {message}" in capsys.readouterr().err  # the command line says the same, no traceback

    monkeypatch.syspath_prepend(str(user_cnn))
    predictor = load_model(checkpoint)
    image = np.random.default_rng(0).integers(0, 256, (48, 60, 3), dtype=np.uint8)
    (prediction,) = predictor.predict([image], routing=True)
    assert prediction["depth"].shape == (48, 60) and np.isfinite(prediction["depth"]).all()
    assert prediction.routing.expert_names == ["resnet18", "mine"]
    torch.testing.assert_close(prediction.routing.alpha.sum(1), np.ones_like(prediction.routing.alpha[:, 0]))
    with pytest.raises(CheckpointError, match="expert_weights names role 'mine', whose expert .* user_cnn"):
        load_model(checkpoint, expert_weights={"mine": "weights.pth"})


def test_a_target_spec_survives_the_stored_config(tiny_config) -> None:
    spec = {"_target_": "torch.nn.Conv2d", "in_channels": 3, "out_channels": 4, "kernel_size": 8, "stride": 8,
            "patch_size": 8, "channels": 4, "mean": [0.5] * 3, "std": [0.5] * 3}  # fmt: skip
    config = tiny_config(experts={"conv": spec})
    assert TigerConfig(**config.to_dict()) == config
