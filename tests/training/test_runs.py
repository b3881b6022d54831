"""Run folders: the newest complete checkpoint is resumed, and no run writes into another run's folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tiger.training.runs import (
    RunFolderExistsError,
    RunFolderGuard,
    newest_checkpoint,
    refuse_existing_run,
    resolve_checkpoint,
    run_markers,
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
    guard.on_multirun_start(config)  # new
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    guard.on_multirun_start(config)  # only Hydra's sweep file: fine
    (sweep / "1" / ".hydra").mkdir(parents=True)
    with pytest.raises(SystemExit, match=r"Error: hydra.sweep.dir=.*sweep/1 already holds a run \(.hydra\)"):
        guard.on_multirun_start(config)
    guard.on_run_start(config)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "results.json").write_text("{}")
    with pytest.raises(SystemExit, match=r"hydra.run.dir=.*r already holds a run \(results.json\)"):
        guard.on_run_start(config)
