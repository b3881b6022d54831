"""Run folders: never write into another run's folder, and resume from the newest complete checkpoint.

A run folder is what ``python -m tiger.train`` writes to (``hydra.run.dir``, or one job folder of a
multirun): ``.hydra/``, ``config.yaml``, ``checkpoints/``, ``results.json`` and the loggers' folders.
:class:`RunFolderGuard` (a Hydra callback, in ``conf/hydra/default.yaml``) refuses a run or a sweep whose
folder already holds one, before Hydra writes anything there.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

RUN_MARKERS = (".hydra", "config.yaml", "results.json", "checkpoints", "csv", "tensorboard", "wandb")


class RunFolderExistsError(FileExistsError):
    """The output folder of a run already holds another run."""


def run_markers(folder: str | os.PathLike, ignore: tuple[str, ...] = ()) -> list[str]:
    """The entries of ``folder`` that show it holds a run (empty if it does not exist)."""
    folder = Path(folder)
    return [name for name in RUN_MARKERS if name not in ignore and (folder / name).exists()]


RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


def is_launching_process() -> bool:
    """False in the processes a DDP launcher starts for ranks > 0 (they join the run of rank 0)."""
    return all(os.environ.get(name, "0") in ("", "0") for name in RANK_VARIABLES)


def refuse_existing_run(folder: str | os.PathLike, key: str, ignore: tuple[str, ...] = ()) -> None:
    """Raise :class:`RunFolderExistsError` naming ``folder`` when it holds a run (see :data:`RUN_MARKERS`).

    Processes of ranks > 0 (:func:`is_launching_process`) write into rank 0's folder and are not checked.
    """
    if not is_launching_process():
        return
    found = run_markers(folder, ignore)
    if found:
        raise RunFolderExistsError(
            f"{key}={folder} already holds a run ({', '.join(found)}); a run never writes into another "
            f"run's folder. Choose a new folder ({key}=<new folder>, or leave it unset for a new dated one); "
            f"to continue that run, resume it into a new folder with ckpt_path={folder}"
        )


class RunFolderGuard(Callback):
    """Hydra callback: stop before a run or sweep writes into a folder that holds an earlier run.

    Hydra turns an exception raised by a callback into a warning and goes on, so the guard exits
    (``SystemExit`` with the message, exit status 1) before Hydra writes ``.hydra/`` and its log.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _exit_on_refusal(lambda: refuse_existing_run(_select(config, "hydra.run.dir"), "hydra.run.dir"))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(_select(config, "hydra.sweep.dir"))

        def check() -> None:
            refuse_existing_run(sweep, "hydra.sweep.dir", ignore=("multirun.yaml",))
            for job in sorted(p for p in sweep.iterdir() if p.is_dir()) if sweep.is_dir() else ():
                refuse_existing_run(job, "hydra.sweep.dir")

        _exit_on_refusal(check)


def _exit_on_refusal(check: Callable[[], None]) -> None:
    try:
        check()
    except RunFolderExistsError as error:
        raise SystemExit(f"Error: {error}") from error


def _select(config: DictConfig, key: str) -> str:
    value = OmegaConf.select(config, key)
    if value is None:
        raise ValueError(f"{key} is not set")
    return str(value)


def _probe(path: Path) -> int:
    """The global step of a readable checkpoint (only its index is read: tensors stay memory-mapped)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return int(checkpoint.get("global_step", -1))


def newest_checkpoint(folder: str | os.PathLike) -> Path:
    """The complete checkpoint of ``folder`` (a run folder or its ``checkpoints/``) with the highest step.

    Checkpoints that cannot be read (truncated, corrupt) are skipped with a warning naming them; among
    those of the same step the most recently written wins.
    """
    folder = Path(folder)
    where = folder / "checkpoints" if (folder / "checkpoints").is_dir() else folder
    candidates = sorted(where.glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    if not candidates:
        raise FileNotFoundError(f"ckpt_path={folder}: no checkpoint (*.ckpt) in {where}")
    readable: list[tuple[int, int, Path]] = []
    for order, candidate in enumerate(candidates):
        try:
            readable.append((_probe(candidate), -order, candidate))
        except Exception as error:  # noqa: BLE001 - any read failure means "not a complete checkpoint"
            warnings.warn(
                f"skipping checkpoint {candidate}: it cannot be read (truncated or corrupt?): {error}",
                stacklevel=2,
            )
    if not readable:
        names = ", ".join(str(p) for p in candidates)
        raise FileNotFoundError(f"ckpt_path={folder}: none of its checkpoints can be read: {names}")
    return max(readable)[2]


def resolve_checkpoint(path: str | os.PathLike | None) -> str | None:
    """A checkpoint file, or an earlier run's folder (-> :func:`newest_checkpoint`); None stays None."""
    if path is None:
        return None
    candidate = Path(path).expanduser()
    if candidate.is_dir():
        candidate = newest_checkpoint(candidate)
        log.info("resuming from %s", candidate)
    if not candidate.is_file():
        raise FileNotFoundError(f"ckpt_path={path!r}: no checkpoint at {candidate}")
    return str(candidate)
