"""The bad inputs and faults of a run, each with the behaviour a user expects: a moved run resumes, a full
disk and a read-only folder are one clear line, zero steps and a misspelt monitor are refused before
training."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from tiger.options import OptionError
from tiger.train import train
from tiger.training.callbacks import (
    AtomicCheckpointIO,
    BestCheckpoint,
    DiskFullError,
    available_monitors,
    relocate,
    resolve_monitor,
)

ROOT = Path(__file__).resolve().parents[2]

SHORT = [  # 4 steps, validation at 2 and 4, last.ckpt every 2 steps; depth and normals only
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.enable_progress_bar=false",
    "data.tasks=[depth,normals]",
    "data.datamodule.synthetic.num_train=8",
    "data.datamodule.synthetic.num_val=4",
    "data.datamodule.batch_size=2",
    "data.datamodule.eval_batch_size=4",
    "callbacks.model_checkpoint.every_n_train_steps=2",
]


def test_a_moved_run_resumes_with_its_checkpoints_found_in_the_new_place(tmp_path, compose_train):
    first = train(compose_train(*SHORT, "final_report=false", output_dir=tmp_path / "old"))
    assert Path(first["checkpoint"]).name.startswith("best_step_")
    shutil.move(tmp_path / "old", tmp_path / "moved")  # `mv` the run folder
    resumed = train(
        compose_train(
            *SHORT, "trainer.max_steps=6", f"ckpt_path={tmp_path / 'moved'}", output_dir=tmp_path / "new"
        )
    )
    assert Path(resumed["checkpoint"]).is_file() and (tmp_path / "new" / "results.json").is_file()
    assert not str(resumed["checkpoint"]).startswith(str(tmp_path / "old"))
    # its best checkpoint gone: refused before training, naming it
    (tmp_path / "moved" / "checkpoints" / Path(first["checkpoint"]).name).unlink()
    cfg = compose_train(
        *SHORT, "trainer.max_steps=6", f"ckpt_path={tmp_path / 'moved'}", output_dir=tmp_path / "x"
    )
    with pytest.raises(
        FileNotFoundError, match=rf"recorded its best checkpoint at {first['checkpoint']}, which is gone"
    ):
        train(cfg)
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_relocate_follows_a_moved_folder_and_keeps_other_runs_paths(tmp_path):
    (tmp_path / "new" / "checkpoints").mkdir(parents=True)
    (tmp_path / "new" / "checkpoints" / "best.ckpt").write_bytes(b"x")
    (tmp_path / "other.ckpt").write_bytes(b"x")
    resumed = tmp_path / "new" / "checkpoints" / "last.ckpt"
    old = str(tmp_path / "old" / "checkpoints")
    assert relocate(f"{old}/best.ckpt", old, resumed) == tmp_path / "new" / "checkpoints" / "best.ckpt"
    assert relocate(str(tmp_path / "other.ckpt"), old, resumed) == tmp_path / "other.ckpt"  # an earlier run's
    assert relocate(f"{old}/gone.ckpt", old, resumed) is None


@contextmanager
def tmpfs(path: Path, options: str):
    """A small file system of its own at ``path`` (root only; skips where mounting is not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                             text=True) if shutil.which("mount") and os.geteuid() == 0 else None  # fmt: skip
    if mounted is None or mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() if mounted else 'not root'})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def run_cli(*overrides: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "tiger.train", *overrides]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_a_full_disk_is_one_line_naming_the_file_and_the_last_complete_checkpoint(tmp_path, offline_env):
    # the first last.ckpt (about 2.6 MB) fits; writing the next beside it does not
    with tmpfs(tmp_path / "disk", "size=4m") as disk:
        run = disk / "run"
        overrides = [*SHORT, "trainer.val_check_interval=100", "final_report=false", f"hydra.run.dir={run}"]
        result = run_cli(*overrides, cwd=tmp_path, env=offline_env())
        last = run / "checkpoints" / "last.ckpt"
        assert result.returncode == 1, result.stderr[-3000:]
        line = f"disk full writing {last}; the last complete checkpoint is {last}; free space and resume it"
        assert line in result.stderr, result.stderr[-3000:]
        assert "unexpected pos" not in result.stderr and "During handling" not in result.stderr
        assert torch.load(last, weights_only=True)["global_step"] == 2  # intact
        assert [p.name for p in last.parent.iterdir()] == ["last.ckpt"]  # no temporary file left


def test_disk_full_while_torch_writes_is_named_and_the_previous_checkpoint_stays(tmp_path, monkeypatch):
    target = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 1}, target)
    save = torch.save

    def torch_on_a_full_disk(obj, file, *args, **kwargs):  # what torch raises: its own error after ENOSPC
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError(
                "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"
            ) from None

    monkeypatch.setattr(torch, "save", torch_on_a_full_disk)
    with pytest.raises(DiskFullError) as error:
        AtomicCheckpointIO().save_checkpoint({"global_step": 2}, target)
    assert str(error.value) == (
        f"disk full writing {target}; the last complete checkpoint is {target}; free space and resume it "
        "with ckpt_path=<its run folder>"
    )
    assert error.value.errno == errno.ENOSPC and "\n" not in str(error.value)
    monkeypatch.setattr(torch, "save", save)
    assert (
        torch.load(target, weights_only=True)["global_step"] == 1 and len(list(target.parent.iterdir())) == 1
    )


@contextmanager
def read_only_folder(path: Path):
    path.mkdir(parents=True)
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
    else:  # root writes through permissions: a read-only file system
        with tmpfs(path, "ro,size=1m") as folder:
            yield folder


def test_a_read_only_run_folder_is_named_before_anything_starts(tmp_path, offline_env):
    with read_only_folder(tmp_path / "ro") as folder:
        result = run_cli(f"hydra.run.dir={folder}", cwd=tmp_path, env=offline_env())
        assert result.returncode == 1
        assert f"Error: hydra.run.dir={folder} is not writable (" in result.stderr, result.stderr[-2000:]
        assert "Unable to configure handler" not in result.stderr and "Seed set" not in result.stderr
        assert list(folder.iterdir()) == []
        inside = folder / "new"
        result = run_cli(f"hydra.run.dir={inside}", cwd=tmp_path, env=offline_env())
        assert result.returncode == 1 and f"hydra.run.dir={inside} is not writable" in result.stderr


def test_a_run_inside_another_run_is_refused_on_the_command_line(tmp_path, offline_env, tiny_checkpoint):
    run = tiny_checkpoint.parents[1]  # a run folder of this session (checkpoints/last.ckpt)
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    result = run_cli(f"hydra.run.dir={run / 'checkpoints'}", cwd=tmp_path, env=offline_env())
    assert result.returncode == 1
    expected = f"Error: hydra.run.dir={run / 'checkpoints'} lies inside the folder of another run, {run}"
    assert expected in result.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


def test_zero_training_steps_are_refused_before_anything_is_built(tmp_path, compose_train, tiny_checkpoint):
    zero = [("trainer.max_steps=0", "max_steps"), ("+trainer.limit_train_batches=0", "limit_train_batches")]
    for override, key in [*zero, ("+trainer.max_epochs=0", "max_epochs")]:
        with pytest.raises(
            OptionError, match=rf"^trainer.{key} is 0: no training step would run and nothing"
        ):
            train(compose_train(*SHORT, override, output_dir=tmp_path / key))
        assert list((tmp_path / key).iterdir()) == [tmp_path / key / ".tiger-run.json"]  # nothing else
    step = torch.load(tiny_checkpoint, weights_only=True)["global_step"]
    cfg = compose_train("trainer.max_steps=2", f"ckpt_path={tiny_checkpoint}", output_dir=tmp_path / "done")
    with pytest.raises(
        OptionError, match=rf"trainer.max_steps is 2 and ckpt_path=.* is at step {step}: no training"
    ):
        train(cfg)


def test_a_misspelt_monitor_is_refused_before_training_listing_the_metrics(tmp_path, compose_train):
    with pytest.raises(ValueError) as error:
        BestCheckpoint(tmp_path, ["semseg", "depth"], monitor="val/semseg/miou")
    message = str(error.value)
    assert message.startswith(
        "callbacks.best_checkpoint.monitor='val/semseg/miou' is not a metric of this run."
    )
    assert "Did you mean val/semseg/mIoU?" in message
    for key in ("val/loss", "val/delta_m", "val/semseg/mIoU", "val/semseg/pixel_acc", "val/depth/rmse",
                "val/depth/log_rmse", "val/depth/abs_rel"):  # fmt: skip
        assert key in message
    assert resolve_monitor(["depth"], "val/depth/abs_rel", "min") == ("val/depth/abs_rel", "min")
    assert "val/edge/odsF" in available_monitors(["edge"]) and "val/normals/mErr" in available_monitors(
        ["normals"]
    )
    cfg = compose_train("callbacks.best_checkpoint.monitor=val/semseg/miou", output_dir=tmp_path / "run")
    with pytest.raises(Exception, match=r"is not a metric of this run. Did you mean val/semseg/mIoU\?"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()
