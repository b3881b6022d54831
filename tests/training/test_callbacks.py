"""Checkpoint schedule, best-checkpoint scoring, per-step seeding and atomic checkpoint writing."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from tiger.training.callbacks import (
    AtomicCheckpointIO,
    BestCheckpoint,
    LastCheckpoint,
    StepSeeding,
    resolve_monitor,
)


class Toy(L.LightningModule):
    """One weight; training draws ``torch.rand`` (like dropout); ``val/depth/rmse`` = |step - 4| + 1."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.draws: dict[int, float] = {}

    def training_step(self, batch, batch_idx):
        draw = torch.rand(())
        self.draws[self.global_step + 1] = float(draw)
        return ((self.weight - batch[0].mean()) ** 2).sum() * draw

    def validation_step(self, batch, batch_idx):
        self.log("val/depth/rmse", abs(self.global_step - 4) + 1.0)
        self.log("val/normals/mErr", 2.0)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loaders() -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    data = torch.utils.data.TensorDataset(torch.ones(64, 1))  # every batch alike: the order does not matter
    return torch.utils.data.DataLoader(data, batch_size=4), torch.utils.data.DataLoader(data, batch_size=32)


class Watch(L.Callback):
    """Records, before each step, which checkpoints exist and their steps."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.seen: dict[int, dict[str, int]] = {}

    def on_train_batch_start(self, trainer, *args) -> None:
        self.seen[trainer.global_step] = {
            p.name: torch.load(p, weights_only=True)["global_step"] for p in self.folder.glob("*.ckpt")
        }


def fit(folder: Path, *callbacks: L.Callback, max_steps: int = 8, ckpt_path: str | None = None) -> L.Trainer:
    trainer = L.Trainer(
        max_steps=max_steps,
        val_check_interval=2,
        check_val_every_n_epoch=None,
        callbacks=list(callbacks),
        plugins=[AtomicCheckpointIO()],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(Toy(), *loaders(), ckpt_path=ckpt_path, weights_only=True)
    return trainer


def test_last_checkpoint_is_written_on_its_schedule_before_any_validation(tmp_path):
    watch = Watch(tmp_path)
    trainer = L.Trainer(
        max_steps=5,
        val_check_interval=4,
        check_val_every_n_epoch=None,
        logger=False,
        callbacks=[watch, LastCheckpoint(tmp_path, every_n_train_steps=1)],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Toy(), *loaders())
    assert watch.seen[1] == {"last.ckpt": 1}  # from step 1 on, long before the first validation (step 4)
    assert watch.seen[3] == {"last.ckpt": 3}
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 5
    with pytest.raises(ValueError, match=r"every_n_train_steps must be >= 1, got 0"):
        LastCheckpoint(tmp_path, every_n_train_steps=0)
    with pytest.raises(TypeError, match=r"every_n_train_steps must be an int >= 1, got 2.5"):
        LastCheckpoint(tmp_path, every_n_train_steps=2.5)


def test_best_checkpoint_holds_the_weights_its_validation_scored(tmp_path):
    best = BestCheckpoint(tmp_path, tasks=["depth", "normals"])
    watch = Watch(tmp_path)
    fit(tmp_path, watch, best, LastCheckpoint(tmp_path, every_n_train_steps=3))
    assert (best.monitor, best.mode) == ("val/depth/rmse", "min")
    # validation at steps 2, 4, 6, 8 scores 3, 1, 3, 5: the best is step 4's weights, scored 1
    assert Path(best.best_model_path).name == "best_step_000004.ckpt" and float(best.best_model_score) == 1.0
    assert torch.load(best.best_model_path, weights_only=True)["global_step"] == 4
    # last.ckpt: every 3 steps and after each validation (the step-2 file is there before step 3)
    assert (
        watch.seen[2]["last.ckpt"] == 2
        and watch.seen[3]["last.ckpt"] == 3
        and watch.seen[5]["last.ckpt"] == 4
    )


def test_best_checkpoint_by_delta_m_against_single_task_baselines(tmp_path):
    best = BestCheckpoint(tmp_path, ["depth", "normals"], "delta_m", baselines={"depth": 2.0, "normals": 2.0})
    fit(tmp_path, best)
    # Delta_m = mean(-(rmse - 2) / 2, -(2 - 2) / 2) x 100: 25 at step 4 (rmse 1), -25 at steps 2 and 6
    assert best.monitor == "val/delta_m" and Path(best.best_model_path).name == "best_step_000004.ckpt"
    assert float(best.best_model_score) == pytest.approx(25.0)
    with pytest.raises(ValueError, match=r"needs callbacks.best_checkpoint.baselines .*missing: normals"):
        BestCheckpoint(tmp_path, ["depth", "normals"], "delta_m", baselines={"depth": 2.0})
    with pytest.raises(ValueError, match=r"baselines.depth must be a number > 0 .*rmse.*got 0"):
        BestCheckpoint(tmp_path, ["depth"], "delta_m", baselines={"depth": 0})
    with pytest.raises(ValueError, match=r"baselines only apply to monitor=delta_m"):
        BestCheckpoint(tmp_path, ["depth"], "auto", baselines={"depth": 1.0})


def test_resume_continues_draws_and_best_score_in_a_new_folder(tmp_path):
    class Killed(Exception):
        pass

    class Kill(L.Callback):
        def on_train_batch_start(self, trainer, *args) -> None:
            if trainer.global_step == 5:
                raise Killed  # after last.ckpt of step 5 was written

    def callbacks(folder: Path) -> list[L.Callback]:
        return [StepSeeding(seed=1), BestCheckpoint(folder, ["depth"]), LastCheckpoint(folder, 1)]

    L.seed_everything(0)
    full = fit(tmp_path / "full", *callbacks(tmp_path / "full"))
    L.seed_everything(0)
    with pytest.raises(Killed):
        fit(tmp_path / "first", Kill(), *callbacks(tmp_path / "first"))
    L.seed_everything(0)
    resumed = fit(tmp_path / "second", *callbacks(tmp_path / "second"),
                  ckpt_path=str(tmp_path / "first" / "last.ckpt"))  # fmt: skip
    assert sorted(resumed.lightning_module.draws) == [6, 7, 8]
    assert all(resumed.lightning_module.draws[s] == full.lightning_module.draws[s] for s in (6, 7, 8))
    assert torch.equal(resumed.lightning_module.weight, full.lightning_module.weight)
    # the resumed run's validations (steps 6, 8) do not beat the interrupted run's best (step 4)
    best = next(c for c in resumed.callbacks if isinstance(c, BestCheckpoint))
    assert best.best_model_path == str(tmp_path / "first" / "best_step_000004.ckpt")
    assert float(best.best_model_score) == 1.0 and not list((tmp_path / "second").glob("best_*"))


def test_monitor_is_derived_from_the_tasks_or_checked():
    assert resolve_monitor(["semseg", "depth"], "auto") == ("val/semseg/mIoU", "max")
    assert resolve_monitor(["depth", "normals"], "auto") == ("val/depth/rmse", "min")
    assert resolve_monitor(["depth", "normals"], "val/normals/mErr") == ("val/normals/mErr", "min")
    assert resolve_monitor(["depth"], "val/loss") == ("val/loss", "min")
    assert resolve_monitor(["depth"], "delta_m") == ("val/delta_m", "max")
    assert resolve_monitor(["depth"], "val/depth/log_rmse", "min") == ("val/depth/log_rmse", "min")
    expected = r"monitor='val/semseg/mIoU' is not a metric of this run.*The metrics of data.tasks=\[depth, "
    with pytest.raises(ValueError, match=expected + r"normals\]: auto, delta_m \(with baselines\), val/loss"):
        resolve_monitor(["depth", "normals"], "val/semseg/mIoU")
    with pytest.raises(
        ValueError, match=r"mode=None for monitor 'val/depth/log_rmse': expected 'max' or 'min'"
    ):
        resolve_monitor(["depth"], "val/depth/log_rmse")


def test_atomic_save_never_leaves_a_truncated_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, target)
    assert torch.load(target, weights_only=True)["global_step"] == 1
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    renames = []
    replace = os.replace
    monkeypatch.setattr(
        os, "replace", lambda src, dst: renames.append((Path(src), Path(dst))) or replace(src, dst)
    )
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, target)
    assert renames[0][1] == target and renames[0][0].parent == target.parent  # a rename within the folder

    def disk_full(obj, file, *args, **kwargs):
        file.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(
        OSError, match=rf"^disk full writing {target}; the last complete checkpoint is {target}"
    ):
        io.save_checkpoint({"global_step": 2}, target)
    assert torch.load(target, weights_only=True)["global_step"] == 1  # the previous one, intact
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]  # no temporary file left


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
