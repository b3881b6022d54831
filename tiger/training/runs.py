"""Run folders: each run has a folder of its own, claimed atomically, and resumes from the newest complete
checkpoint.

A run folder is what ``python -m tiger.train`` writes to (``hydra.run.dir``, or one job folder of a
multirun): ``.hydra/``, ``config.yaml``, ``checkpoints/``, ``results.json``, the loggers' folders and
:data:`CLAIM`, the file that claims it. :class:`RunFolderGuard` (a Hydra callback, in
``conf/hydra/default.yaml``) claims a single run's folder, or a sweep's, before Hydra writes anything there;
:func:`claim_run_folder` refuses

- a folder that holds another run (:class:`RunFolderExistsError`), also when two runs start in the same
  folder at the same instant: the claim is an ``O_EXCL`` create, so only one of them gets it;
- a folder inside another run's folder (``hydra.run.dir=<run>/checkpoints``);
- a folder that cannot be written (:class:`RunFolderNotWritableError`).

Under a SLURM batch job a single run's folder is named after the job (``runs/slurm-<job id>``, the
``tiger_run_name`` resolver of ``conf/hydra/default.yaml``): a requeued job (``SLURM_RESTART_COUNT`` > 0)
finds the folder its earlier attempt claimed and continues that run in place, from its newest complete
checkpoint (:func:`continued_checkpoint`); a multirun's job folders are continued the same way.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from tiger.model.checkpoint import describe_load_failure

log = logging.getLogger(__name__)

CLAIM = ".tiger-run.json"
"""The file that claims a run (or sweep) folder: who claimed it, when, and under which SLURM job."""

RUN_MARKERS = (CLAIM, ".hydra", "config.yaml", "results.json", "checkpoints", "csv", "tensorboard", "wandb")


class RunFolderError(Exception):
    """A run or sweep folder that a run must not (or cannot) write into; the message names it."""


class RunFolderExistsError(RunFolderError, FileExistsError):
    """The output folder of a run already holds another run, or lies inside one."""


class RunFolderNotWritableError(RunFolderError, PermissionError):
    """The output folder of a run cannot be created or written."""


def run_markers(folder: str | os.PathLike, ignore: tuple[str, ...] = ()) -> list[str]:
    """The entries of ``folder`` that show it holds a run (empty if it does not exist)."""
    folder = Path(folder)
    return [name for name in RUN_MARKERS if name not in ignore and (folder / name).exists()]


RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


def is_launching_process() -> bool:
    """False in the processes a DDP launcher starts for ranks > 0 (they join the run of rank 0)."""
    return all(os.environ.get(name, "0") in ("", "0") for name in RANK_VARIABLES)


# --- SLURM ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlurmJob:
    """The SLURM batch job this process runs in: its id (``<array job>_<task>`` for an array task) and
    attempt (``SLURM_RESTART_COUNT``: 0, then 1, 2, ... after each requeue)."""

    id: str
    attempt: int


def slurm_job(environ: Mapping[str, str] | None = None) -> SlurmJob | None:
    """The SLURM batch job of this process, or None (no SLURM, or an interactive allocation: job name
    ``bash`` or ``interactive``, as Lightning's ``SLURMEnvironment`` decides)."""
    env = os.environ if environ is None else environ
    job = env.get("SLURM_JOB_ID")
    if not job or env.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return None
    array_job, array_task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    ident = f"{array_job}_{array_task}" if array_job and array_task else job
    try:
        attempt = int(env.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        attempt = 0
    return SlurmJob(ident, attempt)


def run_name(default: str) -> str:
    """``slurm-<job id>`` in a SLURM batch job (the same for every attempt of the job), else ``default``
    (the resolver ``${tiger_run_name:<default>}`` of ``conf/hydra/default.yaml``)."""
    job = slurm_job()
    return f"slurm-{job.id}" if job else str(default)


OmegaConf.register_new_resolver("tiger_run_name", run_name, replace=True)


# --- claims -------------------------------------------------------------------------------------------

_OWN_CLAIMS: dict[Path, dict[str, Any]] = {}
"""The claims :class:`RunFolderGuard` made for the run this process is about to start: {folder: claim};
the run's own :func:`claim_run_folder` takes its claim from here, once (a second run there is refused)."""


@dataclass(frozen=True)
class Claim:
    """This process's claim of ``folder``; ``continues``: the claim of an earlier attempt of the same SLURM
    job that this one took over (the run continues in place)."""

    folder: Path
    record: dict[str, Any]
    continues: dict[str, Any] | None = None


def read_claim(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The claim record of ``folder`` (None if unclaimed; ``{}`` if unreadable, e.g. half written)."""
    path = Path(folder) / CLAIM
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _record(kind: str) -> dict[str, Any]:
    job = slurm_job()
    return {
        "kind": kind,
        "token": secrets.token_hex(8),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "slurm_job": job.id if job else None,
        "slurm_attempt": job.attempt if job else None,
    }


def _earlier_attempt(record: Mapping[str, Any] | None) -> bool:
    """Whether ``record`` is the claim of an earlier attempt of this process's SLURM job."""
    job = slurm_job()
    return bool(
        job
        and record
        and record.get("slurm_job") == job.id
        and isinstance(record.get("slurm_attempt"), int)
        and record["slurm_attempt"] < job.attempt
    )


def _describe(record: Mapping[str, Any]) -> str:
    if not record:
        return "an unreadable claim"
    who = f"pid {record.get('pid')} on {record.get('host')}, {record.get('time')}"
    if record.get("slurm_job"):
        who += f", SLURM job {record['slurm_job']} attempt {record.get('slurm_attempt')}"
    return who


def enclosing_run(folder: str | os.PathLike) -> Path | None:
    """The nearest folder above ``folder`` that holds a run (a run claim, or, for runs from before claims,
    ``checkpoints/`` beside Hydra's ``.hydra/``), or None. Sweep folders are not runs, nor is a project
    folder that merely has a ``config.yaml`` or ``checkpoints/``."""
    for parent in Path(os.path.abspath(folder)).parents:
        claim = read_claim(parent)
        if claim is not None and claim.get("kind") != "sweep":
            return parent
        if claim is None and (parent / "checkpoints").is_dir() and (parent / ".hydra").is_dir():
            return parent  # a run from before claims
    return None


def refuse_existing_run(folder: str | os.PathLike, key: str, ignore: tuple[str, ...] = ()) -> None:
    """Raise :class:`RunFolderExistsError` naming ``folder`` when it holds a run (see :data:`RUN_MARKERS`)
    or lies inside one (:func:`enclosing_run`).

    Processes of ranks > 0 (:func:`is_launching_process`) write into rank 0's folder and are not checked.
    """
    if not is_launching_process():
        return
    outer = enclosing_run(folder)
    if outer is not None:
        raise RunFolderExistsError(
            f"{key}={folder} lies inside the folder of another run, {outer} "
            f"({', '.join(run_markers(outer))}); a run never writes into another run's folder. Choose a "
            f"folder outside it ({key}=<new folder>, or leave it unset for a new dated one)"
        )
    found = run_markers(folder, ignore)
    if found:
        claim = read_claim(folder)
        same_job = ""
        job = slurm_job()
        if job and claim and claim.get("slurm_job") == job.id:
            same_job = (
                f" It was claimed by this SLURM job's own attempt {claim.get('slurm_attempt')} (a run folder "
                f"is named after its SLURM job so that a requeued job continues it): run one training per "
                f"job, or set {key}."
            )
        raise RunFolderExistsError(
            f"{key}={folder} already holds a run ({', '.join(found)}); a run never writes into another "
            f"run's folder. Choose a new folder ({key}=<new folder>, or leave it unset for a new dated one); "
            f"to continue that run, resume it into a new folder with ckpt_path={folder}.{same_job}"
        )


def claim_run_folder(
    folder: str | os.PathLike,
    key: str,
    kind: str = "run",
    ignore: tuple[str, ...] = (),
    reserve: bool = False,
) -> Claim | None:
    """Claim ``folder`` for a run (``kind="run"``) or a sweep (``"sweep"``), atomically.

    ``reserve``: the claim is for a run this process starts next (Hydra's callback claims before Hydra writes;
    the run's own claim of the folder then takes it over, once). A folder claimed by an earlier attempt of
    this process's SLURM job is taken over (the requeued job continues the run, :attr:`Claim.continues`).
    Otherwise the folder must not hold or lie inside a run (:func:`refuse_existing_run`, ``ignore``: entries
    that do not count, e.g. the ``.hydra/`` Hydra wrote for a multirun job), and the claim file is created
    with ``O_EXCL``: of two runs started in the same folder at the same instant, the second is refused.
    Processes of ranks > 0 claim nothing (None).

    Raises:
        RunFolderExistsError: the folder holds a run, lies inside one, or another run claimed it first.
        RunFolderNotWritableError: ``<folder> is not writable``.
    """
    if not is_launching_process():
        return None
    folder = Path(os.path.abspath(folder))
    if folder in _OWN_CLAIMS:
        return Claim(folder, _OWN_CLAIMS.pop(folder))
    previous = read_claim(folder)
    continues = previous if _earlier_attempt(previous) else None
    if continues is None:
        refuse_existing_run(folder, key, ignore)
    record = _record(kind)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if continues is not None:
            temporary = folder / f".{CLAIM}.{record['token']}.tmp"
            temporary.write_text(json.dumps(record, indent=1))
            os.replace(temporary, folder / CLAIM)
        else:
            descriptor = os.open(folder / CLAIM, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(descriptor, "w") as file:
                file.write(json.dumps(record, indent=1))
    except FileExistsError:
        raise RunFolderExistsError(
            f"{key}={folder} was claimed by another run that started at the same time "
            f"({_describe(read_claim(folder) or {})}); a run never writes into another run's folder. Choose "
            f"a new folder ({key}=<new folder>, or leave it unset for a new dated one)"
        ) from None
    except OSError as error:
        raise RunFolderNotWritableError(
            f"{key}={folder} is not writable ({error.strerror or error}); choose a folder you can write to"
        ) from None
    if reserve:
        _OWN_CLAIMS[folder] = record
    if continues is not None:
        set_aside_logs(folder, continues.get("slurm_attempt"))
        log.info("SLURM job %s attempt %s continues the run in %s", record["slurm_job"],
                 record["slurm_attempt"], folder)  # fmt: skip
    return Claim(folder, record, continues)


def set_aside_logs(folder: Path, attempt: Any) -> None:
    """Keep an earlier attempt's CSV log, which Lightning's CSV logger would delete when the run continues
    in its folder: ``csv/metrics.csv`` -> ``csv/metrics.attempt-<attempt>.csv``."""
    log_file = folder / "csv" / "metrics.csv"
    if log_file.is_file():
        os.replace(log_file, log_file.with_name(f"metrics.attempt-{attempt}.csv"))


def continued_checkpoint(folder: str | os.PathLike) -> str | None:
    """The checkpoint a requeued SLURM job continues its run from: the newest complete checkpoint of
    ``folder`` when an earlier attempt of this job claimed it (or this attempt, for ranks > 0), else None.
    """
    job = slurm_job()
    claim = read_claim(folder)
    if not (job and job.attempt > 0 and claim and claim.get("slurm_job") == job.id):
        return None
    if not list((Path(folder) / "checkpoints").glob("*.ckpt")):
        return None
    return str(newest_checkpoint(folder))


class RunFolderGuard(Callback):
    """Hydra callback: claim a run's or a sweep's folder (:func:`claim_run_folder`) before Hydra writes
    ``.hydra/`` and its log there.

    Hydra turns an exception raised by a callback into a warning and goes on, so the guard exits
    (``SystemExit`` with the message, exit status 1) before Hydra writes anything.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        run_dir = _select(config, "hydra.run.dir")
        _exit_on_refusal(lambda: claim_run_folder(run_dir, "hydra.run.dir", reserve=True))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(_select(config, "hydra.sweep.dir"))

        def check() -> None:
            if not _earlier_attempt(read_claim(sweep)):  # a requeued SLURM job continues its job folders
                for job in sorted(p for p in sweep.iterdir() if p.is_dir()) if sweep.is_dir() else ():
                    if job.name != ".submitit":  # the submitit launcher's own folder
                        refuse_existing_run(job, "hydra.sweep.dir")
            claim_run_folder(sweep, "hydra.sweep.dir", kind="sweep", ignore=("multirun.yaml",))

        _exit_on_refusal(check)


def _exit_on_refusal(check: Callable[[], Any]) -> None:
    try:
        check()
    except RunFolderError as error:
        raise SystemExit(f"Error: {error}") from error


def _select(config: DictConfig, key: str) -> str:
    value = OmegaConf.select(config, key)
    if value is None:
        raise ValueError(f"{key} is not set")
    return str(value)


def _probe(path: Path) -> int:
    """The global step of a readable checkpoint (only its index is read: tensors stay memory-mapped)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
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
                f"skipping checkpoint {candidate}: it {describe_load_failure(candidate, error)}", stacklevel=2
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
