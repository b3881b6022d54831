"""When checkpoints are written, how, and what keeps a resumed run on the uninterrupted run's path.

- :class:`LastCheckpoint`: ``last.ckpt`` every ``every_n_train_steps`` from the start of training, after
  every validation and at the end, whatever the metrics (what ``ckpt_path=<run dir>`` resumes from).
- :class:`BestCheckpoint`: the best checkpoint by a validation metric derived from the configured tasks,
  scored with the validation that just ran on the weights being saved.
- :class:`StepSeeding`: torch's generators seeded from (seed, step, rank) before every training step.
- :class:`AtomicCheckpointIO`: every checkpoint is written to a temporary file in its folder, flushed to
  disk and renamed, so a file named ``*.ckpt`` is always complete; a full disk is one
  :class:`DiskFullError` naming the file and the last complete checkpoint.
"""

from __future__ import annotations

import difflib
import errno
import os
import secrets
import warnings
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
from tiger.tasks import make_task

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

    @property
    def saved_step(self) -> int:
        """The step of the last ``last.ckpt`` this callback wrote (-1: none yet)."""
        return self._saved_step

    def save(self, trainer: L.Trainer) -> None:
        """Write ``last.ckpt`` now (every process of a DDP run calls it)."""
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
            self.save(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._fitting(trainer) and trainer.global_step > 0:
            self.save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._fitting(trainer) and trainer.global_step != self._saved_step:
            self.save(trainer)


def metric_names(task: str) -> list[str] | None:
    """The keys the protocol metric of ``task`` computes (``mIoU``, ``pixel_acc`` for semseg), found by
    scoring one small random target; None where the task entry cannot say (a kind without
    ``random_target``)."""
    try:
        entry = make_task(task, num_classes=2)
        metric = entry.metric("synthetic")
        target = entry.random_target(1, (8, 8), torch.Generator().manual_seed(0))
        logits = torch.zeros(1, entry.channels, 8, 8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            metric.update(entry.postprocess(logits), target)
            return sorted(metric.compute())
    except Exception:  # noqa: BLE001 - an entry that cannot be probed is not checked by name
        return None


def available_monitors(tasks: Sequence[str], delta_m: bool = True) -> list[str]:
    """Every key ``callbacks.best_checkpoint.monitor`` can name for ``tasks``: ``val/loss``,
    ``val/delta_m`` and ``val/<task>/<metric>`` of each task's protocol metric (:func:`metric_names`)."""
    keys = ["val/loss"] + ([DELTA_M] if delta_m else [])
    for task in tasks:
        names = metric_names(task)
        keys += [f"val/{task}/{name}" for name in names] if names else [f"val/{task}/<metric>"]
    return keys


def resolve_monitor(tasks: Sequence[str], monitor: str, mode: str | None = None) -> tuple[str, str]:
    """The logged key and mode ("max" / "min") that pick the best checkpoint, checked before training.

    ``monitor="auto"``: the main metric of the first task (``val/semseg/mIoU`` for NYUD and PASCAL,
    ``val/depth/rmse`` for ``data.tasks=[depth,normals]``). ``"delta_m"``: the multi-task performance
    Delta_m against single-task baselines (:class:`BestCheckpoint` ``baselines``), higher is better.
    Otherwise ``val/<task>/<metric>`` of a configured task and a metric its protocol metric computes
    (:func:`available_monitors`), or ``val/loss``; ``mode`` defaults to the metric's direction where it is
    known. A name that does not exist is refused with the names that do (and the closest one).
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
        names = metric_names(parts[1]) if len(parts) == 3 and parts[1] in tasks else None
        if len(parts) != 3 or parts[0] != "val" or parts[1] not in tasks or (names and parts[2] not in names):
            raise ValueError(_unknown_monitor(monitor, tasks))
        main = MAIN_METRIC.get(parts[1])
        known = ("max" if main[1] else "min") if main and main[0] == parts[2] else None
    mode = mode or known
    if mode not in ("max", "min"):
        raise ValueError(
            f"callbacks.best_checkpoint.mode={mode!r} for monitor {monitor!r}: expected 'max' or 'min'"
        )
    return monitor, mode


def _unknown_monitor(monitor: str, tasks: Sequence[str]) -> str:
    choices = available_monitors(tasks)
    lowered = {choice.lower(): choice for choice in choices}
    close = [lowered[c] for c in difflib.get_close_matches(str(monitor).lower(), list(lowered), n=1)]
    hint = f" Did you mean {close[0]}?" if close else ""
    return (
        f"callbacks.best_checkpoint.monitor={monitor!r} is not a metric of this run.{hint} The metrics of "
        f"data.tasks=[{', '.join(tasks)}]: auto, delta_m (with baselines), {', '.join(choices)}"
    )


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

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._resumed_from = trainer.ckpt_path  # Lightning calls load_state_dict next

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the interrupted run's best score and file, though the resumed run has a new folder.

        Lightning forgets the score when the folder changes, so the resumed run's first validation would
        become the best whatever its value. The earlier run's files are only pointed to, never deleted
        (Lightning removes only files inside this run's folder). A run folder that was moved is followed:
        its checkpoints are found relative to the checkpoint being resumed (:func:`relocate`).
        """
        resumed = getattr(self, "_resumed_from", None)
        if resumed:
            state_dict = relocated_state(state_dict, resumed)
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


def relocate(path: str, saved_dirpath: str | None, resumed: str | os.PathLike) -> Path | None:
    """Where the checkpoint ``path``, recorded by a run whose checkpoint folder was ``saved_dirpath``, is
    now, given the checkpoint being resumed (``resumed``, in that run's checkpoint folder, wherever the run
    folder was moved): the same place relative to ``resumed``'s folder, else ``path`` itself; None if it is
    in neither place."""
    recorded = Path(path)
    if saved_dirpath:
        try:
            relative = recorded.relative_to(saved_dirpath)
        except ValueError:
            relative = None
        if relative is not None and (Path(resumed).parent / relative).is_file():
            return Path(resumed).parent / relative
    return recorded if recorded.is_file() else None


def relocated_state(state_dict: Mapping[str, Any], resumed: str | os.PathLike) -> dict[str, Any]:
    """A ``ModelCheckpoint`` state whose recorded checkpoint paths follow a moved run folder
    (:func:`relocate`); the best one must exist.

    Raises:
        FileNotFoundError: the best checkpoint the resumed run recorded is in neither place.
    """
    state = dict(state_dict)
    saved = state.get("dirpath")
    best = state.get("best_model_path") or ""
    if best:
        found = relocate(best, saved, resumed)
        if found is None:
            raise FileNotFoundError(
                f"ckpt_path={resumed}: the run it resumes recorded its best checkpoint at {best}, which is "
                f"gone (not there, nor at the same place next to {resumed}); a run's checkpoints travel "
                f"with its folder: move or copy the whole run folder, checkpoints/ included"
            )
        state["best_model_path"] = str(found)
    for key in ("kth_best_model_path", "last_model_path"):
        if state.get(key):
            state[key] = str(relocate(state[key], saved, resumed) or state[key])
    if isinstance(state.get("best_k_models"), Mapping):
        state["best_k_models"] = {
            str(relocate(k, saved, resumed) or k): v for k, v in state["best_k_models"].items()
        }
    return state


def check_resumed_checkpoints(checkpoint: Mapping[str, Any], resumed: str | os.PathLike) -> None:
    """Before training: every best checkpoint that ``checkpoint`` (being resumed from ``resumed``) records
    can be found (:func:`relocated_state`), so a resumed run never fails at its end for a moved file."""
    for state in (checkpoint.get("callbacks") or {}).values():
        if isinstance(state, Mapping) and "best_model_path" in state:
            relocated_state(state, resumed)


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


class DiskFullError(OSError):
    """A checkpoint could not be written for lack of space; the message names it and the last complete
    checkpoint of its folder (which is intact: checkpoints are written atomically)."""

    def __init__(self, path: str | os.PathLike) -> None:
        path = Path(path)
        kept = _last_complete(path.parent)
        super().__init__(
            errno.ENOSPC,
            f"disk full writing {path}; the last complete checkpoint is "
            + (str(kept) if kept else f"none (no complete checkpoint in {path.parent} yet)")
            + "; free space and resume it with ckpt_path=<its run folder>",
        )
        self.filename = str(path)

    def __str__(self) -> str:
        return self.strerror


def _disk_full(error: BaseException) -> bool:
    """Whether ``error``, or an error it arose from (torch reports "unexpected pos" after the write
    failed), is a full disk or quota."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _last_complete(folder: Path) -> Path | None:
    """The newest ``*.ckpt`` of ``folder`` (every one is complete: see :class:`AtomicCheckpointIO`)."""
    found = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns) if folder.is_dir() else []
    return found[-1] if found else None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each local checkpoint to a temporary file in its folder, fsync it, then rename it into place.

    An interrupted save (a killed process, a full disk) leaves the previous checkpoint intact and at most a
    hidden ``.<name>.*.tmp`` file, never a truncated ``.ckpt``; a full disk raises :class:`DiskFullError`
    (``disk full writing <path>; the last complete checkpoint is <path>``). Remote paths use Lightning's
    writer.
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
        except BaseException as error:
            temporary.unlink(missing_ok=True)
            if _disk_full(error):
                raise DiskFullError(target) from None
            raise
        try:  # make the rename itself durable (not every file system can sync a folder)
            folder = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        except OSError:
            pass
