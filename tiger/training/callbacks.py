"""When checkpoints are written, how, and what keeps a resumed run on the uninterrupted run's path.

- :class:`LastCheckpoint`: ``last.ckpt`` every ``every_n_train_steps`` from the start of training, after
  every validation and at the end, whatever the metrics (what ``ckpt_path=<run dir>`` resumes from).
- :class:`BestCheckpoint`: the best checkpoint by a validation metric derived from the configured tasks,
  scored with the validation that just ran on the weights being saved.
- :class:`StepSeeding`: torch's generators seeded from (seed, step, rank) before every training step.
- :class:`AtomicCheckpointIO`: every checkpoint is written to a temporary file in its folder, flushed to
  disk and renamed, so a file named ``*.ckpt`` is always complete.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn

from tiger.metrics.summary import MAIN_METRIC, multi_task_delta

DELTA_M = "val/delta_m"

LAST_CHECKPOINT = "last.ckpt"


class LastCheckpoint(Checkpoint):
    """Write ``<dirpath>/last.ckpt`` on its own schedule, independent of any monitored metric.

    It is written every ``every_n_train_steps`` optimizer steps (from step ``every_n_train_steps`` on,
    before the first validation), again after each validation of the fit (so a resumed run does not repeat
    or skip that validation), and after the last step. Lightning runs checkpoint callbacks after all
    others, in their order: configured after :class:`BestCheckpoint`, ``last.ckpt`` holds its new state.

    Args:
        dirpath: the run's checkpoint folder.
        every_n_train_steps: the interval in optimizer steps (an int >= 1).
    """

    def __init__(self, dirpath: str | os.PathLike, every_n_train_steps: int) -> None:
        key = "callbacks.model_checkpoint.every_n_train_steps"
        if isinstance(every_n_train_steps, bool) or not isinstance(every_n_train_steps, int):
            raise TypeError(f"{key} must be an int >= 1, got {every_n_train_steps!r}")
        if every_n_train_steps < 1:
            raise ValueError(f"{key} must be >= 1, got {every_n_train_steps}")
        self.dirpath = Path(dirpath)
        self.every_n_train_steps = every_n_train_steps
        self.last_model_path = ""
        self._saved_step = -1

    @property
    def path(self) -> Path:
        return self.dirpath / LAST_CHECKPOINT

    def _save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path)
        self._saved_step = trainer.global_step
        self.last_model_path = str(self.path)

    @staticmethod
    def _fitting(trainer: L.Trainer) -> bool:
        return (
            trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking and not trainer.fast_dev_run
        )

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        step = trainer.global_step
        if (
            self._fitting(trainer)
            and step > 0
            and step != self._saved_step
            and step % self.every_n_train_steps == 0
        ):
            self._save(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._fitting(trainer) and trainer.global_step > 0:
            self._save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._fitting(trainer) and trainer.global_step != self._saved_step:
            self._save(trainer)


def resolve_monitor(tasks: Sequence[str], monitor: str, mode: str | None = None) -> tuple[str, str]:
    """The logged key and mode ("max" / "min") that pick the best checkpoint.

    ``monitor="auto"``: the main metric of the first task (``val/semseg/mIoU`` for NYUD and PASCAL,
    ``val/depth/rmse`` for ``data.tasks=[depth,normals]``). ``"delta_m"``: the multi-task performance
    Delta_m against single-task baselines (:class:`BestCheckpoint` ``baselines``), higher is better.
    Otherwise ``val/<task>/<metric>`` of a configured task, or ``val/loss``; ``mode`` defaults to the
    metric's direction where it is known.
    """
    tasks = list(tasks)
    if not tasks:
        raise ValueError("callbacks.best_checkpoint: no tasks configured (data.tasks is empty)")
    if monitor == "auto":
        if tasks[0] not in MAIN_METRIC:
            raise ValueError(f"callbacks.best_checkpoint.monitor=auto: no main metric for task {tasks[0]!r}")
        metric, higher = MAIN_METRIC[tasks[0]]
        monitor, known = f"val/{tasks[0]}/{metric}", "max" if higher else "min"
    elif monitor in ("delta_m", DELTA_M):
        monitor, known = DELTA_M, "max"
    elif monitor == "val/loss":
        known = "min"
    else:
        parts = str(monitor).split("/")
        if len(parts) != 3 or parts[0] != "val" or parts[1] not in tasks:
            raise ValueError(
                f"callbacks.best_checkpoint.monitor={monitor!r}: expected 'auto', 'delta_m', 'val/loss' or "
                f"'val/<task>/<metric>' with a configured task ({', '.join(tasks)})"
            )
        main = MAIN_METRIC.get(parts[1])
        known = ("max" if main[1] else "min") if main and main[0] == parts[2] else None
    mode = mode or known
    if mode not in ("max", "min"):
        raise ValueError(
            f"callbacks.best_checkpoint.mode={mode!r} for monitor {monitor!r}: expected 'max' or 'min'"
        )
    return monitor, mode


class BestCheckpoint(ModelCheckpoint):
    """The best checkpoint by a validation metric (``best_step_<step>.ckpt``), saved when validation ends.

    Args:
        dirpath: the run's checkpoint folder.
        tasks: the configured tasks (``data.tasks``), for ``monitor="auto"`` and to check ``monitor``.
        monitor, mode: see :func:`resolve_monitor`.
        baselines: for ``monitor="delta_m"``: {task: the single-task baseline's main metric} for every
            configured task (:func:`tiger.metrics.multi_task_delta`, in percent).
        filename: Lightning's ``ModelCheckpoint`` file name pattern.
    """

    def __init__(
        self,
        dirpath: str | os.PathLike,
        tasks: Sequence[str],
        monitor: str = "auto",
        mode: str | None = None,
        baselines: Mapping[str, float] | None = None,
        filename: str = "best_step_{step:06d}",
    ) -> None:
        monitor, mode = resolve_monitor(tasks, monitor, mode)
        self.baselines = _check_baselines(tasks, baselines) if monitor == DELTA_M else None
        if baselines and monitor != DELTA_M:
            raise ValueError(
                f"callbacks.best_checkpoint.baselines only apply to monitor=delta_m, not {monitor!r}"
            )
        super().__init__(
            dirpath=dirpath,
            filename=filename,
            monitor=monitor,
            mode=mode,
            save_top_k=1,
            save_last=False,
            every_n_epochs=1,
            save_on_train_epoch_end=False,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        )

    def _monitor_candidates(self, trainer: L.Trainer) -> dict[str, torch.Tensor]:
        """Lightning's candidates (the logged metrics), plus ``val/delta_m`` once every task is validated."""
        candidates = super()._monitor_candidates(trainer)
        if self.baselines is not None:
            keys = {task: f"val/{task}/{MAIN_METRIC[task][0]}" for task in self.baselines}
            if all(key in candidates for key in keys.values()):
                values = {task: float(candidates[key]) for task, key in keys.items()}
                candidates[DELTA_M] = torch.tensor(multi_task_delta(values, self.baselines))
        return candidates

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the interrupted run's best score and file, though the resumed run has a new folder.

        Lightning forgets the score when the folder changes, so the resumed run's first validation would
        become the best whatever its value. The earlier run's files are only pointed to, never deleted
        (Lightning removes only files inside this run's folder).
        """
        super().load_state_dict({**state_dict, "dirpath": self.dirpath})


def _check_baselines(tasks: Sequence[str], baselines: Mapping[str, float] | None) -> dict[str, float]:
    key = "callbacks.best_checkpoint.baselines"
    missing = [task for task in tasks if task not in (baselines or {})]
    if missing:
        example = ", ".join(f"{t}: <{MAIN_METRIC[t][0]}>" for t in tasks if t in MAIN_METRIC)
        raise ValueError(
            f"callbacks.best_checkpoint.monitor=delta_m needs {key} with the single-task baseline of every "
            f"configured task, e.g. {{{example}}}; missing: {', '.join(missing)}"
        )
    checked = {}
    for task in tasks:
        value = baselines[task]
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(
                f"{key}.{task} must be a number > 0 (the baseline's {MAIN_METRIC[task][0]}), got {value!r}"
            )
        checked[task] = float(value)
    unknown = sorted(set(baselines) - set(tasks))
    if unknown:
        raise ValueError(f"{key}: tasks {unknown} are not configured (data.tasks: {', '.join(tasks)})")
    return checked


class StepSeeding(Callback):
    """Seed torch's generators (CPU and CUDA) before every training step from (seed, global step, rank).

    Whatever a step draws (dropout, random masks) then depends only on its step, so a resumed run draws
    what the uninterrupted run drew, however often the global generator was used in between
    (``seed_everything`` at start-up, validation, data loader start-up).
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        entropy = [self.seed, trainer.global_step, trainer.global_rank]
        torch.manual_seed(int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each local checkpoint to a temporary file in its folder, fsync it, then rename it into place.

    An interrupted save (a killed process, a full disk) leaves the previous checkpoint intact and at most a
    hidden ``.<name>.*.tmp`` file, never a truncated ``.ckpt``. Remote paths use Lightning's writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if "://" in str(path) and not str(path).startswith("file://"):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(str(path).removeprefix("file://"))
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            with open(temporary, "xb") as file:  # the permissions of a new file (umask), like torch.save
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        try:  # make the rename itself durable (not every file system can sync a folder)
            folder = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        except OSError:
            pass
