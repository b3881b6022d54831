"""Stop on a scheduler's signal with ``last.ckpt`` at the step that was running, say how to resume, exit
non-zero; under SLURM, requeue the job, which then continues the run by itself.

A scheduler stops a job with SIGTERM (SLURM on preemption, ``scancel``, Kubernetes), and SLURM can warn
before its time limit with the signal of ``#SBATCH --signal=USR1@<seconds>`` (``hydra/launcher=slurm`` sets
it). :class:`Preemption` takes both over from Lightning while the training loop runs:

- the handler only notes the signal (nothing runs inside it);
- at the end of the step in progress, ``last.ckpt`` is written
  (:class:`tiger.training.callbacks.LastCheckpoint`, atomically, by
  :class:`~tiger.training.callbacks.AtomicCheckpointIO`). A step followed by a validation finishes it
  first; ``last.ckpt`` is written after each validation anyway. A resumed run so continues exactly where
  this one stopped (the same state as the scheduled ``last.ckpt``);
- before the next step, the run stops: it prints the resume command (``python -m tiger.train <the
  overrides> ckpt_path=<run folder>``) and raises :class:`Preempted`, a ``SystemExit`` with status
  128 + the signal number (143 for SIGTERM);
- the requeue signal of Lightning's ``SLURMEnvironment`` (SIGUSR1, when ``auto_requeue`` is on: Lightning's
  default in a SLURM batch job) also requeues the job (``scontrol requeue <job id>``); the requeued job keeps
  its id, finds its run folder (``runs/slurm-<job id>``, or its multirun job folder) and continues from
  ``last.ckpt`` (:func:`tiger.training.runs.continued_checkpoint`).

Why not Lightning's own handling: on SIGTERM Lightning stops after the current batch without a checkpoint
(``last.ckpt`` stays at its last scheduled step) and exits 0, and it aborts a validation half-way; its SLURM
handler writes an ``hpc_ckpt_<n>.ckpt`` from inside the signal handler, in the middle of whatever step is
running. Under DDP every process agrees on the step to stop at (one all-reduce per step boundary).
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from tiger.training.callbacks import LastCheckpoint
from tiger.training.runs import slurm_job

log = logging.getLogger(__name__)


class Preempted(SystemExit):
    """The run stopped on a signal, with ``last.ckpt`` at its last step (exit status 128 + signal)."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(128 + int(signum))
        self.signum = int(signum)
        self.message = message

    def __str__(self) -> str:
        return self.message


def signal_number(name: str | int) -> signal.Signals:
    """``"SIGTERM"``, ``"TERM"``, ``15`` -> ``signal.SIGTERM``."""
    if isinstance(name, int):
        return signal.Signals(name)
    text = str(name).upper()
    try:
        return signal.Signals[text if text.startswith("SIG") else "SIG" + text]
    except KeyError:
        raise ValueError(f"callbacks.preemption.signals: unknown signal {name!r}") from None


def resume_command(run_dir: str | os.PathLike | None, overrides: Sequence[str] | None = None) -> str:
    """``python -m tiger.train <overrides> ckpt_path=<run_dir>``: the overrides of this run (Hydra's, as
    typed; a multirun job's include its sweep values), without any earlier ``ckpt_path``. With
    ``run_dir=None``: this run's own command, as typed."""
    if overrides is None:
        overrides = _task_overrides()
    if run_dir is not None:
        overrides = [o for o in overrides if not o.lstrip("+~").startswith("ckpt_path=")]
        overrides.append(f"ckpt_path={Path(run_dir).absolute()}")
    return " ".join(shlex.quote(word) for word in ["python", "-m", "tiger.train", *overrides])


def _task_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [str(o) for o in HydraConfig.get().overrides.task]


def requeue_slurm_job(job_id: str) -> bool:
    """``scontrol requeue <job_id>``; whether it succeeded (a failure is logged)."""
    try:
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as error:
        log.warning("requeueing SLURM job %s failed: %s", job_id, error)
        return False
    if result.returncode != 0:
        log.warning("requeueing SLURM job %s failed (%s): %s", job_id, result.returncode, result.stderr)
    return result.returncode == 0


class Preemption(Callback):
    """Stop at a step boundary on ``signals``, with ``last.ckpt`` at that step (see the module's doc).

    Args:
        signals: the signals that stop the run (names such as ``SIGTERM``); the SLURM requeue signal of
            Lightning's ``SLURMEnvironment`` (SIGUSR1 by default) is added under SLURM.
        run_dir: the run folder, for the resume command (default: the parent of ``last.ckpt``'s folder).
    """

    def __init__(self, signals: Sequence[str | int] = ("SIGTERM",), run_dir: str | None = None) -> None:
        self.signals = [signal_number(name) for name in signals]
        self.run_dir = Path(run_dir) if run_dir else None
        self._received = 0  # the signal number, set by the handler
        self._stop = 0  # the signal every process agreed to stop on
        self._previous: dict[int, Any] = {}

    # --- the handler ---------------------------------------------------------------------------------
    def _handle(self, signum: int, frame: Any) -> None:
        self._received = self._received or int(signum)

    def _requeue_signal(self, trainer: L.Trainer) -> int | None:
        environment = getattr(trainer.strategy, "cluster_environment", None) or getattr(
            getattr(trainer, "_accelerator_connector", None), "cluster_environment", None
        )
        if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
            return int(environment.requeue_signal) if environment.requeue_signal else None
        return None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Take the signals over from Lightning (it registers its own when fitting starts; it restores the
        earlier handlers when fitting ends)."""
        if threading.current_thread() is not threading.main_thread():
            return
        requeue = self._requeue_signal(trainer)
        for signum in {*map(int, self.signals), *([requeue] if requeue else [])}:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)
        if trainer.received_sigterm:  # Lightning's handler got one during the sanity validation
            raise stopped_before_training(trainer)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for signum, handler in self._previous.items():
            if handler is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signum, handler)
        self._previous = {}

    # --- the step boundaries -------------------------------------------------------------------------
    def _agreed(self, trainer: L.Trainer) -> int:
        """The signal any process received (the largest number), the same in every process."""
        if trainer.world_size <= 1:
            return self._received
        flag = torch.tensor(self._received, device=trainer.strategy.root_device)
        return int(trainer.strategy.reduce(flag, reduce_op="max"))

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._stop = self._stop or self._agreed(trainer)
        last = _last_checkpoint(trainer)
        if self._stop and last is not None and last.saved_step != trainer.global_step:
            last.save(trainer)

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._stop = self._stop or self._agreed(trainer)
        if not self._stop:
            return
        last = _last_checkpoint(trainer)
        if last is not None and last.saved_step != trainer.global_step:
            return  # the signal came between two steps: this one runs and is saved at its end
        raise Preempted(self._stop, self._report(trainer, last))

    def _report(self, trainer: L.Trainer, last: LastCheckpoint | None) -> str:
        """Requeue under SLURM (rank 0), print what happened and how to resume; the message."""
        name = signal.Signals(self._stop).name
        step = trainer.global_step
        if last is None:
            message = (
                f"Stopped by {name} at step {step}; no last.ckpt is configured (callbacks.model_checkpoint)"
            )
            run_dir = self.run_dir
        else:
            run_dir = self.run_dir or last.dirpath.parent
            message = f"Stopped by {name} at step {step}: {last.path} holds step {last.saved_step}."
        if run_dir is not None:
            message += f"\nResume with: {resume_command(run_dir)}"
        job = slurm_job()
        requeue = trainer.is_global_zero and job and self._stop == self._requeue_signal(trainer)
        if requeue and requeue_slurm_job(job.id):
            message += (
                f"\nRequeued SLURM job {job.id}: its next attempt continues this run in {run_dir} from "
                f"step {step} (nothing to type)."
            )
        if trainer.is_global_zero:
            print(f"\n{message}", file=sys.stderr, flush=True)
        return message


def _last_checkpoint(trainer: L.Trainer) -> LastCheckpoint | None:
    return next((c for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)


def fit(trainer: L.Trainer, module: L.LightningModule, datamodule: Any, ckpt_path: str | None) -> None:
    """``trainer.fit`` (weights only); a SIGTERM that Lightning caught before :class:`Preemption` took the
    signals over (during the sanity validation) is a :class:`Preempted` too: exit status 143, not 0."""
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:
        raise stopped_before_training(trainer) from None


def stopped_before_training(trainer: L.Trainer) -> Preempted:
    """A SIGTERM before the first training step of this fit: nothing new to save; say how to start again."""
    message = (
        f"Stopped by SIGTERM before the first training step (step {trainer.global_step}); nothing new was "
        f"saved.\nStart it again with: {resume_command(None)}"
    )
    if trainer.is_global_zero:
        print(f"\n{message}", file=sys.stderr, flush=True)
    return Preempted(signal.SIGTERM, message)
