"""Run folders: the newest complete checkpoint is resumed; a run claims its folder atomically and never writes
into another run's folder (nor inside one, nor an unwritable one); a requeued SLURM job continues its run."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tiger.training.runs import (
    _OWN_CLAIMS,
    RunFolderExistsError,
    RunFolderGuard,
    RunFolderNotWritableError,
    SlurmJob,
    claim_run_folder,
    continued_checkpoint,
    enclosing_run,
    newest_checkpoint,
    read_claim,
    refuse_existing_run,
    resolve_checkpoint,
    run_markers,
    run_name,
    slurm_job,
)

ROOT = Path(__file__).resolve().parents[2]


def write(path: Path, step: int, mtime: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "state_dict": {"w": torch.zeros(64)}}, path)
    os.utime(path, ns=(mtime, mtime))
    return path


def test_resume_picks_the_newest_complete_checkpoint(tmp_path):
    run = tmp_path / "run"
    best = write(run / "checkpoints" / "best_step_000004.ckpt", 4, 10**18)
    last = write(run / "checkpoints" / "last.ckpt", 6, 2 * 10**18)
    (run / "checkpoints" / ".last.ckpt.123.ab.tmp").write_bytes(b"PK half")  # an interrupted atomic save
    assert newest_checkpoint(run) == last
    assert resolve_checkpoint(str(run)) == str(last) and resolve_checkpoint(str(run / "checkpoints")) == str(
        last
    )
    # same step: the most recently written (last.ckpt after a validation vs the best of that validation)
    write(best, 6, 3 * 10**18)
    assert newest_checkpoint(run) == best
    # a truncated last.ckpt (a save that failed half-way) is skipped, with a warning naming it
    write(best, 4, 10**18)
    last.write_bytes(last.read_bytes()[:200])
    with pytest.warns(UserWarning, match=r"skipping checkpoint .*last\.ckpt: it cannot be read"):
        assert newest_checkpoint(run) == best
    best.write_bytes(b"")
    with (
        pytest.warns(UserWarning),
        pytest.raises(FileNotFoundError, match="none of its checkpoints can be read"),
    ):
        newest_checkpoint(run)
    with pytest.raises(FileNotFoundError, match=r"no checkpoint \(\*\.ckpt\) in"):
        newest_checkpoint(tmp_path / "empty")
    assert resolve_checkpoint(None) is None
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        resolve_checkpoint(str(tmp_path / "missing.ckpt"))


def test_a_folder_that_holds_a_run_is_refused(tmp_path, monkeypatch):
    refuse_existing_run(tmp_path / "new", "hydra.run.dir")  # absent or empty: fine
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "config.yaml").write_text("seed: 1\n")
    assert run_markers(tmp_path / "run") == ["config.yaml", "checkpoints"]
    with pytest.raises(RunFolderExistsError, match=r"hydra.run.dir=.*run already holds a run \(config.yaml, "
                       r"checkpoints\).*Choose a new folder.*ckpt_path="):  # fmt: skip
        refuse_existing_run(tmp_path / "run", "hydra.run.dir")
    monkeypatch.setenv("LOCAL_RANK", "1")  # a DDP worker joins rank 0's new run
    refuse_existing_run(tmp_path / "run", "hydra.run.dir")


def test_train_refuses_an_earlier_runs_folder_before_writing(tmp_path, offline_env):
    run = tmp_path / "earlier"
    (run / ".hydra").mkdir(parents=True)
    for name in (".hydra/config.yaml", "config.yaml", "results.json"):
        (run / name).write_text("the user's\n")
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    result = subprocess.run([sys.executable, "-m", "tiger.train", f"hydra.run.dir={run}"], cwd=tmp_path,
                            env={**offline_env(), "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 1
    assert f"hydra.run.dir={run} already holds a run (.hydra, config.yaml, results.json)" in result.stderr
    assert before == {p: p.stat().st_mtime_ns for p in run.rglob("*")}  # not even .hydra/ was rewritten
    assert sorted(p.name for p in run.rglob("*")) == [".hydra", "config.yaml", "config.yaml", "results.json"]


def test_a_sweep_folder_that_holds_runs_is_refused(tmp_path):
    sweep = tmp_path / "sweep"
    guard = RunFolderGuard()
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}, "run": {"dir": str(tmp_path / "r")}}})
    guard.on_multirun_start(config)  # new: claimed for the sweep
    assert read_claim(sweep)["kind"] == "sweep"
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    (sweep / "0" / ".hydra").mkdir(parents=True)
    claim_run_folder(sweep / "0", "hydra.run.dir", ignore=(".hydra",))  # a job folder inside the sweep: fine
    _OWN_CLAIMS.clear()  # another process
    with pytest.raises(
        SystemExit, match=r"Error: hydra.sweep.dir=.*sweep/0 already holds a run \(\.tiger-run"
    ):
        guard.on_multirun_start(config)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "results.json").write_text("{}")
    with pytest.raises(SystemExit, match=r"hydra.run.dir=.*r already holds a run \(results.json\)"):
        guard.on_run_start(config)


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch):
    """Each test is a new process: no claims made yet, no SLURM job."""
    _OWN_CLAIMS.clear()
    for name in ("SLURM_JOB_ID", "SLURM_JOB_NAME", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID",
                 "SLURM_RESTART_COUNT", "SLURM_PROCID"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    yield
    _OWN_CLAIMS.clear()


def test_a_run_folder_inside_another_run_is_refused(tmp_path):
    run = tmp_path / "run"
    claim_run_folder(run, "hydra.run.dir")
    (run / "checkpoints").mkdir()
    _OWN_CLAIMS.clear()
    for inner in (run / "checkpoints", run / "checkpoints" / "deeper"):
        expected = (
            rf"hydra.run.dir={inner} lies inside the folder of another run, {run} \(\.tiger-run\.json, "
        )
        with pytest.raises(RunFolderExistsError, match=expected + r"checkpoints\)"):
            claim_run_folder(inner, "hydra.run.dir")
    assert not (run / "checkpoints" / "deeper").exists()
    # a run of before claims (.hydra/ and checkpoints/) counts too; a project folder with a config.yaml and
    # a checkpoints/ folder does not
    old, project = tmp_path / "old", tmp_path / "project"
    for folder in (old, project):
        (folder / "checkpoints").mkdir(parents=True)
        (folder / "config.yaml").write_text("seed: 1\n")
    (old / ".hydra").mkdir()
    assert (
        enclosing_run(old / "checkpoints" / "x") == old and enclosing_run(project / "outputs" / "x") is None
    )
    guard = RunFolderGuard()
    config = OmegaConf.create(
        {"hydra": {"run": {"dir": str(old / "checkpoints")}, "sweep": {"dir": str(run / "s")}}}
    )
    with pytest.raises(SystemExit, match=r"Error: hydra.run.dir=.*old/checkpoints lies inside the folder of"):
        guard.on_run_start(config)
    with pytest.raises(SystemExit, match=r"Error: hydra.sweep.dir=.*run/s lies inside the folder of"):
        guard.on_multirun_start(config)


def _claim_at_once(folder: str, start: float, results) -> None:
    time.sleep(max(0.0, start - time.time()))
    try:
        claim_run_folder(folder, "hydra.run.dir")
        results.put("claimed")
    except RunFolderExistsError as error:
        results.put(str(error))


def test_of_runs_started_in_one_folder_at_the_same_instant_one_gets_it(tmp_path):
    context = multiprocessing.get_context("fork")  # four processes, each a run starting in the same folder
    for attempt in range(3):
        folder, results = tmp_path / f"same{attempt}", context.Queue()
        start = time.time() + 1.0
        workers = [
            context.Process(target=_claim_at_once, args=(str(folder), start, results)) for _ in range(4)
        ]
        for worker in workers:
            worker.start()
        outcomes = [results.get(timeout=60) for _ in workers]
        for worker in workers:
            worker.join()
        assert outcomes.count("claimed") == 1, outcomes
        for refusal in (o for o in outcomes if o != "claimed"):
            assert f"hydra.run.dir={folder}" in refusal
            assert (
                "claimed by another run that started at the same time" in refusal
                or "already holds" in refusal
            )
        assert [p.name for p in folder.iterdir()] == [".tiger-run.json"]


def test_an_unwritable_run_folder_is_named_before_anything_starts(tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(
        RunFolderNotWritableError, match=rf"^hydra.run.dir={folder} is not writable \(Permission denied\)"
    ):
        claim_run_folder(folder, "hydra.run.dir")
    monkeypatch.undo()
    config = OmegaConf.create({"hydra": {"run": {"dir": str(folder)}}})
    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(SystemExit, match=r"Error: hydra.run.dir=.* is not writable"):
        RunFolderGuard().on_run_start(config)


def slurm(monkeypatch, job: str, attempt: int | None = None, name: str = "tiger") -> None:
    monkeypatch.setenv("SLURM_JOB_ID", job)
    monkeypatch.setenv("SLURM_JOB_NAME", name)
    if attempt is None:
        monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    else:
        monkeypatch.setenv("SLURM_RESTART_COUNT", str(attempt))
    _OWN_CLAIMS.clear()  # each attempt of a job is a new process


def test_slurm_job_identity_and_folder_name(monkeypatch):
    assert slurm_job() is None and run_name("2024-01-01") == "2024-01-01"
    slurm(monkeypatch, "4242")
    assert slurm_job() == SlurmJob("4242", 0) and run_name("2024-01-01") == "slurm-4242"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4240")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "3")
    assert slurm_job() == SlurmJob("4240_2", 3)
    slurm(monkeypatch, "4242", name="interactive")  # salloc / srun --pty: not a batch job, dated folders
    assert slurm_job() is None and run_name("d") == "d"


def test_a_requeued_slurm_job_continues_its_own_run_in_place(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "slurm-4242"
    slurm(monkeypatch, "4242")
    first = claim_run_folder(run, "hydra.run.dir")
    assert first.continues is None and first.record["slurm_job"] == "4242"
    assert continued_checkpoint(run) is None
    last = write(run / "checkpoints" / "last.ckpt", 5, 2 * 10**18)
    write(run / "checkpoints" / "best_step_000004.ckpt", 4, 10**18)
    # a second training in the same attempt of the job is another run: refused, saying why
    slurm(monkeypatch, "4242")
    with pytest.raises(
        RunFolderExistsError, match=r"claimed by this SLURM job's own attempt 0.*one training per job"
    ):
        claim_run_folder(run, "hydra.run.dir")
    # the requeued job (attempt 1) takes the folder over and continues from its newest checkpoint
    slurm(monkeypatch, "4242", attempt=1)
    second = claim_run_folder(run, "hydra.run.dir")
    assert second.continues["slurm_attempt"] == 0 and read_claim(run)["slurm_attempt"] == 1
    assert continued_checkpoint(run) == str(last)
    monkeypatch.setenv("SLURM_PROCID", "1")  # its other ranks resume from the same checkpoint
    assert claim_run_folder(run, "hydra.run.dir") is None and continued_checkpoint(run) == str(last)
    monkeypatch.delenv("SLURM_PROCID")
    # another job never continues it
    slurm(monkeypatch, "5555", attempt=1)
    assert continued_checkpoint(run) is None
    with pytest.raises(RunFolderExistsError, match="already holds a run"):
        claim_run_folder(run, "hydra.run.dir")


def test_a_requeued_slurm_multirun_continues_its_sweep(tmp_path, monkeypatch):
    sweep = tmp_path / "multiruns" / "slurm-77"
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    slurm(monkeypatch, "77")
    RunFolderGuard().on_multirun_start(config)
    claim_run_folder(sweep / "0", "hydra.run.dir")
    write(sweep / "0" / "checkpoints" / "last.ckpt", 3, 10**18)
    slurm(monkeypatch, "77", attempt=1)
    RunFolderGuard().on_multirun_start(config)  # its job folders hold this job's runs: continued
    assert claim_run_folder(sweep / "0", "hydra.run.dir").continues is not None
    assert continued_checkpoint(sweep / "0") == str(sweep / "0" / "checkpoints" / "last.ckpt")


def test_the_guards_claim_is_for_one_run_of_this_process(tmp_path):
    folder = tmp_path / "run"
    RunFolderGuard().on_run_start(OmegaConf.create({"hydra": {"run": {"dir": str(folder)}}}))
    assert read_claim(folder)["pid"] == os.getpid()
    claim_run_folder(folder, "hydra.run.dir", ignore=(".hydra",))  # the run Hydra starts takes it over
    with pytest.raises(RunFolderExistsError, match=r"already holds a run \(\.tiger-run\.json\)"):
        claim_run_folder(folder, "hydra.run.dir", ignore=(".hydra",))  # a second run in this process
