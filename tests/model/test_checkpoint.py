"""The checkpoint format: round trip, strict fit, and the errors a user sees for files that are not ours."""

from __future__ import annotations

import functools
import os
import pickle
from pathlib import Path

import lightning as L
import pytest
import torch

from tiger.inference import load_model
from tiger.model import checkpoint
from tiger.model.checkpoint import CheckpointError, read_checkpoint
from tiger.train import resume_checkpoint
from tiger.training.losses import LossConfig
from tiger.training.module import TigerModule

EXPERTS = ("clip_tiny", "sam_tiny")


@pytest.fixture(scope="module")
def tiny_module(tiny_config):
    def build(seed: int, **net) -> TigerModule:
        torch.manual_seed(seed)
        config = tiny_config(EXPERTS, grid=(2, 3), **net)
        optimizer = functools.partial(torch.optim.AdamW, lr=1e-3)
        return TigerModule(config, LossConfig(lambda_cf=0.1), optimizer, None, "synthetic")

    return build


def save(module: TigerModule, path: Path) -> Path:
    """What Lightning writes, through the module's own hook."""
    saved = {"state_dict": module.state_dict(), "pytorch-lightning_version": L.__version__}
    module.on_save_checkpoint(saved)
    torch.save(saved, path)
    return path


@pytest.fixture(scope="module")
def saved(tiny_module, tmp_path_factory) -> Path:
    return save(tiny_module(0), tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


def trainable(module: TigerModule) -> dict[str, torch.Tensor]:
    return {k: v for k, v in module.net.state_dict().items() if not k.startswith("experts.")}


def test_a_checkpoint_holds_only_the_trained_weights_and_the_tiger_section(saved):
    stored = read_checkpoint(saved)
    assert stored["state_dict"] and not any(k.startswith("net.experts.") for k in stored["state_dict"])
    assert checkpoint.INSTRUCTION_KEY not in stored["state_dict"]  # encoder None: no instruction buffer
    section = stored["tiger"]
    assert section["format"] == checkpoint.FORMAT and section["tasks"] == ["semseg", "depth"]
    assert [e["name"] for e in section["experts"]] == ["clip_tiny", "sam_tiny"]


def test_round_trip_restores_every_trained_weight(saved, tiny_module):
    original = tiny_module(0)
    other = tiny_module(1)  # another seed: its weights differ, so a load that does nothing fails below
    assert any(not torch.equal(v, trainable(other)[k]) for k, v in trainable(original).items())
    checkpoint.load_trainable(other.net, read_checkpoint(saved)["state_dict"], saved)
    for key, value in trainable(original).items():
        torch.testing.assert_close(trainable(other)[key], value, rtol=0, atol=0, msg=key)
    images = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(
            other.net.eval()(images).predictions["depth"], original.net.eval()(images).predictions["depth"]
        )
    rebuilt = load_model(saved).model
    for key, value in trainable(original).items():
        torch.testing.assert_close(rebuilt.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_lightning_hook_loads_the_weights_and_names_the_file_on_a_mismatch(saved, tiny_module, tmp_path):
    other = tiny_module(1)
    stored = read_checkpoint(saved)
    other.on_load_checkpoint(stored)
    torch.testing.assert_close(trainable(other), trainable(tiny_module(0)), rtol=0, atol=0)
    assert set(stored["state_dict"]) == set(other.state_dict())  # ready for Lightning's strict load

    wider = tiny_module(0, decoder_width=64)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.ckpt_path = saved
    wider.trainer = trainer
    with pytest.raises(
        CheckpointError, match=rf"(?s){saved.name}: the checkpoint does not fit.*size mismatch for"
    ):
        wider.on_load_checkpoint(read_checkpoint(saved))
    with pytest.raises(
        CheckpointError, match=rf"{saved.name}: the checkpoint comes from another configuration"
    ):
        fewer = tiny_module(0, tasks=["semseg"])
        fewer.trainer = trainer
        fewer.on_load_checkpoint(read_checkpoint(saved))


def test_keys_and_shapes_that_differ_are_all_named(saved, tiny_module):
    state = dict(read_checkpoint(saved)["state_dict"])
    del state["net.heads.heads.depth.1.bias"]
    state["net.extra.weight"] = torch.zeros(2)
    grown = "net.heads.heads.semseg.1.weight"
    state[grown] = torch.zeros(9, *state[grown].shape[1:])
    with pytest.raises(CheckpointError) as error:
        checkpoint.load_trainable(tiny_module(0).net, state, "edited.ckpt")
    message = str(error.value)
    assert message.startswith("edited.ckpt: the checkpoint does not fit this TIGER configuration")
    assert 'Missing key(s) in state_dict: "heads.heads.depth.1.bias"' in message
    assert 'Unexpected key(s) in state_dict: "extra.weight"' in message
    assert (
        "size mismatch for heads.heads.semseg.1.weight: copying a param with shape torch.Size([9," in message
    )


def test_a_tiger_section_that_disagrees_with_the_tensors_names_the_file(saved, tmp_path):
    stored = read_checkpoint(saved)
    edited = tmp_path / "edited.ckpt"
    net = {**stored["tiger"]["net"], "decoder_width": 64}
    torch.save({**stored, "tiger": {**stored["tiger"], "net": net}}, edited)
    with pytest.raises(CheckpointError, match=rf"(?s){edited}: the checkpoint does not fit.*size mismatch"):
        load_model(edited)
    net = {**stored["tiger"]["net"], "tasks": ["semseg", "flow"]}
    torch.save({**stored, "tiger": {**stored["tiger"], "net": net}}, edited)
    with pytest.raises(
        CheckpointError, match=rf"{edited}: its 'tiger' section does not build a model: tasks must be one of"
    ):
        load_model(edited)


def test_a_folder_is_named_as_a_folder_with_the_checkpoints_it_holds(saved, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(
        FileNotFoundError, match=r"run is a folder, not a checkpoint file; it holds no \.ckpt"
    ):
        read_checkpoint(run)
    for name in ("epoch=0-step=2.ckpt", "last.ckpt"):
        (run / "checkpoints" / name).write_bytes(saved.read_bytes())
    with pytest.raises(
        FileNotFoundError, match=r"it holds 2 checkpoint\(s\): checkpoints/epoch=0-step=2.ckpt, "
    ):
        load_model(run)
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*missing.ckpt"):
        read_checkpoint(tmp_path / "missing.ckpt")


class Pickled:
    """A class the weights-only unpickler refuses."""


class Malicious:
    """A pickle that runs a shell command when it is loaded unsafely."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_blocked_global_gives_the_reason_never_the_advice_to_load_unsafely(tmp_path):
    path = tmp_path / "pickled.ckpt"
    torch.save({"tiger": {"format": 1}, "model": Pickled()}, path)
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(path)
    message = str(error.value)
    assert f"{path} holds the pickled Python global {__name__}.Pickled" in message
    assert "weights_only=False" not in message and "will likely succeed" not in message
    with pytest.raises(CheckpointError, match="holds the pickled Python global"):
        resume_checkpoint(str(path))


def test_a_malicious_pickle_names_the_blocked_global_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    as_torch = run / "checkpoints" / "last.ckpt"
    torch.save({"tiger": {"format": 1}, "state_dict": Malicious(marker)}, as_torch)
    raw = tmp_path / "raw.ckpt"
    raw.write_bytes(pickle.dumps({"state_dict": Malicious(marker)}))  # a plain pickle (protocol 4+)
    legacy = tmp_path / "legacy.ckpt"
    legacy.write_bytes(pickle.dumps({"state_dict": Malicious(marker)}, protocol=2))
    blocked = f"holds the pickled Python global {os.system.__module__}.system"
    for path, expected in (
        (as_torch, blocked),
        (legacy, blocked),
        (raw, "cannot be read: it is not a torch checkpoint"),
    ):
        with pytest.raises(CheckpointError) as error:
            read_checkpoint(path)
        message = str(error.value)
        assert message.startswith(f"not a TIGER checkpoint: {path} {expected}"), message
        for advice in ("weights_only=False", "weights_only` set to `False", "will likely succeed", "operand"):
            assert advice not in message
    # resuming its run folder: the file is skipped with the same reason, and nothing is resumed
    skipped = rf"skipping checkpoint {as_torch}: it {blocked}"
    with (
        pytest.warns(UserWarning, match=skipped) as caught,
        pytest.raises(FileNotFoundError, match="none of its checkpoints can be read"),
    ):
        resume_checkpoint(str(run))
    assert not any("likely succeed" in str(w.message) for w in caught)
    assert not marker.exists()  # nothing from the files ran


def test_a_foreign_lightning_dict_is_refused_clearly_before_lightning_reads_it(tmp_path):
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"layer.weight": torch.zeros(1)}, "epoch": 3}, foreign)
    with pytest.raises(
        CheckpointError, match=r"not a TIGER checkpoint: .*foreign.ckpt has no 'tiger' section"
    ):
        resume_checkpoint(str(foreign))
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"this is no checkpoint" * 10)
    with pytest.raises(
        CheckpointError,
        match=r"not a TIGER checkpoint: .*garbage.ckpt cannot be read: it is not a torch checkpoint",
    ):
        resume_checkpoint(str(garbage))


def test_a_checkpoint_written_before_the_layout_change_still_loads(saved, tiny_module, tmp_path):
    """The format of the checkpoints written before TigerConfig and LossConfig (the same state dict keys, a
    ``net`` section of build_tiger keyword arguments, a ``loss`` section of three options) still loads."""
    stored = read_checkpoint(saved)
    old = tmp_path / "old.ckpt"
    section = dict(stored["tiger"])
    section["net"] = {key: value for key, value in section["net"].items() if key != "projection_hidden"}
    section["loss"] = {"lambda_cf": 0.1, "tau": 1.0, "removal": "mean"}
    torch.save({**stored, "tiger": section}, old)
    predictor = load_model(old)
    assert predictor.loss_config == LossConfig(lambda_cf=0.1, removal="mean")
    for key, value in trainable(tiny_module(0)).items():
        torch.testing.assert_close(predictor.model.state_dict()[key], value, rtol=0, atol=0, msg=key)
