"""What ``python -m tiger.train`` checks before it builds anything, and what it checks after fitting:

- :func:`start_run`: the run folder is claimed (:func:`tiger.training.runs.claim_run_folder`: not another
  run's, not inside one, writable, not taken by a run started at the same instant), the training would run
  at least one step (:func:`check_steps`), and the checkpoint to resume from (``ckpt_path=``, or, for a
  requeued SLURM job, its own run's newest checkpoint) is a TIGER checkpoint whose recorded best
  checkpoint can be found, also in a run folder that was moved (:func:`resume_checkpoint`);
- :func:`check_trained`: a fit that ran no step is an error that says nothing was saved.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch

from tiger.model.checkpoint import check_resumable
from tiger.options import OptionError
from tiger.training.callbacks import check_resumed_checkpoints
from tiger.training.runs import claim_run_folder, continued_checkpoint, resolve_checkpoint


def start_run(output_dir: str | Path, trainer: Mapping[str, Any], ckpt_path: str | None) -> str | None:
    """Claim ``output_dir`` and check the run before anything is built; the checkpoint to resume from.

    Args:
        output_dir: the run folder (Hydra's ``RunFolderGuard`` claimed a single run's folder already, before
            Hydra wrote ``.hydra/`` and its log; a multirun job's folder is claimed here).
        trainer: the ``trainer`` config (``max_steps``, ``max_epochs``, ``limit_train_batches``).
        ckpt_path: ``ckpt_path=`` (a checkpoint file or a run folder) or None.
    """
    claim_run_folder(output_dir, "hydra.run.dir", ignore=(".hydra",))
    check_steps(trainer)
    continued = continued_checkpoint(output_dir)  # a requeued SLURM job continues its own run
    return resume_checkpoint(continued or ckpt_path, trainer, continuing=continued is not None)


def check_steps(trainer: Mapping[str, Any]) -> None:
    """Refuse a configuration under which no training step runs (and so nothing would be saved)."""
    for key in ("max_steps", "max_epochs", "limit_train_batches"):
        value = trainer.get(key)
        if value is not None and not isinstance(value, bool) and value == 0:
            raise OptionError(
                f"trainer.{key}",
                "is 0: no training step would run and nothing would be saved; "
                + (
                    "-1 leaves the length to trainer.max_epochs, >= 1 sets it"
                    if key == "max_steps"
                    else "use >= 1"
                ),
            )


def resume_checkpoint(
    path: str | None, trainer: Mapping[str, Any] | None = None, continuing: bool = False
) -> str | None:
    """The checkpoint ``ckpt_path=`` names (a file, or the newest complete one of a run folder, see
    :func:`tiger.training.runs.resolve_checkpoint`), checked before Lightning reads it: a TIGER checkpoint,
    its recorded best checkpoint found (relative to it when the run folder was moved), and a step below
    ``trainer.max_steps`` (unless a requeued job is ``continuing`` its own run, e.g. for its final report).
    """
    resolved = resolve_checkpoint(path)
    if resolved is None:
        return None
    check_resumable(resolved)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        checkpoint = torch.load(resolved, map_location="cpu", weights_only=True, mmap=True)
    check_resumed_checkpoints(checkpoint, resolved)
    max_steps = (trainer or {}).get("max_steps")
    step = int(checkpoint.get("global_step", 0))
    if not continuing and isinstance(max_steps, int) and 0 < max_steps <= step:
        raise OptionError(
            "trainer.max_steps",
            f"is {max_steps} and ckpt_path={path} is at step {step}: no training step would run and nothing "
            "would be saved; raise trainer.max_steps to train further",
        )
    return resolved


def check_trained(trainer: L.Trainer) -> None:
    """After fitting: raise if no step ran (nothing was saved), e.g. a ``limit_train_batches`` that selects
    no batch."""
    if trainer.global_step == 0:
        raise RuntimeError(
            f"no training step ran (trainer.max_steps={trainer.max_steps}, max_epochs={trainer.max_epochs}, "
            f"limit_train_batches={trainer.limit_train_batches}); nothing was saved"
        )
