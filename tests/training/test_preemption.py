"""Stopping on a scheduler's signal: last.ckpt at the step that ran, the resume command, a non-zero exit, and
under SLURM a requeued job that continues the run by itself (real signals, real processes, CPU)."""

from __future__ import annotations

import csv
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from tiger.train import train
from tiger.training.preemption import Preempted, Preemption, resume_command

ROOT = Path(__file__).resolve().parents[2]

LONG = [  # long enough to be stopped in the middle: 40 steps, last.ckpt every 4, no validation, no report
    "trainer.max_steps=40",
    "trainer.val_check_interval=1000",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "data.datamodule.synthetic.num_train=16",
    "data.datamodule.synthetic.num_val=4",
    "data.datamodule.batch_size=2",
    "callbacks.model_checkpoint.every_n_train_steps=4",
    "final_report=false",
    "torch_threads=1",
]


def start(overrides: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "tiger.train", *overrides]
    return subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def step_of(path: Path) -> int:
    return int(torch.load(path, weights_only=True, map_location="cpu")["global_step"])


def signal_after_first_checkpoint(process: subprocess.Popen, last: Path, signum: int) -> tuple[str, str]:
    """Wait for ``last.ckpt`` (step 4), send ``signum`` while training goes on, and wait for the exit."""
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None and not last.is_file():
        time.sleep(0.05)
    assert process.poll() is None, process.communicate()
    process.send_signal(signum)
    return process.communicate(timeout=240)


def logged_steps(run: Path, name: str = "metrics.csv") -> list[int]:
    with open(run / "csv" / name) as file:
        return sorted({int(row["step"]) for row in csv.DictReader(file) if row.get("train/loss")})


def test_sigterm_saves_the_running_step_prints_the_resume_command_and_exits_non_zero(tmp_path, offline_env):
    run = tmp_path / "run"
    process = start([*LONG, f"hydra.run.dir={run}"], tmp_path, offline_env())
    out, err = signal_after_first_checkpoint(process, run / "checkpoints" / "last.ckpt", signal.SIGTERM)
    assert process.returncode == 128 + signal.SIGTERM, err[-3000:]
    stopped = step_of(run / "checkpoints" / "last.ckpt")
    assert 4 <= stopped < 40
    assert f"Stopped by SIGTERM at step {stopped}: {run}/checkpoints/last.ckpt holds step {stopped}." in err
    # every step that ran is in the checkpoint (steps log as 0 .. n-1): none lost
    assert logged_steps(run)[-1] == stopped - 1
    assert not (run / "results.json").exists() and not list(run.rglob("*.tmp"))
    command = next(line for line in err.splitlines() if line.startswith("Resume with: "))
    words = shlex.split(command.removeprefix("Resume with: "))
    assert words[:3] == ["python", "-m", "tiger.train"] and words[-1] == f"ckpt_path={run}"
    assert words[3:-1] == LONG  # the overrides as typed (hydra.run.dir is not one of them)

    # the printed command, as a user runs it (into a new dated folder under outputs/)
    resumed = subprocess.run([sys.executable, *words[1:]], cwd=tmp_path, env=offline_env(),
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (second,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    assert step_of(second / "checkpoints" / "last.ckpt") == 40
    assert logged_steps(second)[0] == stopped  # continued from the stopped step, not from 0


def test_requeued_slurm_job_continues_the_same_run_by_itself(tmp_path, offline_env):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.log"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = {**offline_env(), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env |= {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "tiger", "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}
    run = tmp_path / "outputs" / "train" / "runs" / "slurm-4242"  # no hydra.run.dir: named after the job

    process = start(LONG, tmp_path, env)
    out, err = signal_after_first_checkpoint(process, run / "checkpoints" / "last.ckpt", signal.SIGUSR1)
    assert process.returncode == 128 + signal.SIGUSR1, err[-3000:]
    stopped = step_of(run / "checkpoints" / "last.ckpt")
    assert calls.read_text().split() == ["requeue", "4242"]
    assert f"Requeued SLURM job 4242: its next attempt continues this run in {run} from step {stopped}" in err

    # SLURM starts the same command again, same job id, SLURM_RESTART_COUNT=1: nobody types anything
    again = subprocess.run([sys.executable, "-m", "tiger.train", *LONG], cwd=tmp_path,
                           env={**env, "SLURM_RESTART_COUNT": "1"}, capture_output=True, text=True,
                           timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert [p.name for p in (tmp_path / "outputs" / "train" / "runs").iterdir()] == ["slurm-4242"]
    assert step_of(run / "checkpoints" / "last.ckpt") == 40 and (run / "results.json").is_file()
    # the first attempt's log is kept beside the continued one; together: every step once
    assert logged_steps(run, "metrics.attempt-0.csv") == list(range(stopped))
    assert logged_steps(run) == list(range(stopped, 40))


RESUME = [  # 3 batches an epoch, validation at steps 3 and 6, last.ckpt every 2 steps (as in test_train)
    "trainer.max_steps=6",
    "trainer.val_check_interval=3",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "data.tasks=[depth,normals]",
    "data.datamodule.synthetic.num_train=12",
    "data.datamodule.synthetic.num_val=4",
    "data.datamodule.batch_size=4",
    "data.datamodule.eval_batch_size=4",
    "callbacks.model_checkpoint.every_n_train_steps=2",
]


class SignalAt(L.Callback):
    """Sends this process a real SIGTERM in the middle of a training step or of a validation."""

    def __init__(self, step: int, during: str) -> None:
        self.step, self.during = step, during

    def on_train_batch_start(self, trainer, *args) -> None:
        if self.during == "train" and trainer.global_step == self.step - 1:
            os.kill(os.getpid(), signal.SIGTERM)  # during step `step`

    def on_validation_batch_start(self, trainer, *args) -> None:
        if self.during == "validation" and trainer.global_step == self.step and not trainer.sanity_checking:
            os.kill(os.getpid(), signal.SIGTERM)


def losses(run: Path) -> dict[int, float]:
    with open(run / "csv" / "metrics.csv") as file:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(file) if r["train/loss"]}


def test_a_stopped_and_resumed_run_reproduces_the_uninterrupted_run(tmp_path, monkeypatch, compose_train):
    """A SIGTERM in the middle of step 5, and one in the middle of the validation of step 3."""
    full = train(compose_train(*RESUME, output_dir=tmp_path / "full"))
    expected = losses(tmp_path / "full")
    original = Preemption.on_train_start
    for step, during in ((5, "train"), (3, "validation")):
        first, second = tmp_path / f"first_{during}", tmp_path / f"second_{during}"

        def with_signal(self, trainer, pl_module, step=step, during=during):
            original(self, trainer, pl_module)
            trainer.callbacks.append(SignalAt(step, during))

        with monkeypatch.context() as patch:
            patch.setattr(Preemption, "on_train_start", with_signal)
            with pytest.raises(Preempted) as stopped:
                train(compose_train(*RESUME, output_dir=first))
        assert stopped.value.code == 143 and f"Stopped by SIGTERM at step {step}" in str(stopped.value)
        assert torch.load(first / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == step
        resumed = train(compose_train(*RESUME, f"ckpt_path={first}", output_dir=second))
        assert sorted(losses(first)) == list(range(step)) and sorted(losses(second)) == list(range(step, 6))
        for at, loss in {**losses(first), **losses(second)}.items():
            assert loss == pytest.approx(expected[at], rel=1e-6, abs=1e-6), (during, at)
        for task, values in full["metrics"].items():
            for name, value in values.items():
                assert resumed["metrics"][task][name] == pytest.approx(value, rel=1e-6, abs=1e-6), (
                    task,
                    name,
                )
        assert resumed["best_score"] == pytest.approx(full["best_score"])


def test_the_resume_command_quotes_and_replaces_ckpt_path(tmp_path):
    overrides = [
        "experiment=nyud_tiger_l",
        "model.net.instructions.texts.depth=How far is it?",
        "ckpt_path=/x",
    ]
    assert shlex.split(resume_command(None, overrides)) == ["python", "-m", "tiger.train", *overrides]
    command = resume_command(tmp_path / "run", overrides)
    assert shlex.split(command) == [
        "python", "-m", "tiger.train", "experiment=nyud_tiger_l",
        "model.net.instructions.texts.depth=How far is it?", f"ckpt_path={tmp_path / 'run'}",
    ]  # fmt: skip


def test_a_sigterm_before_the_first_step_exits_non_zero_with_the_command(
    tmp_path, monkeypatch, compose_train
):
    class EarlySignal(L.Callback):
        def on_sanity_check_start(self, trainer, pl_module) -> None:
            os.kill(os.getpid(), signal.SIGTERM)  # Lightning's handler is the one registered here

    def setup(self, trainer, pl_module, stage):
        trainer.callbacks.append(EarlySignal())

    monkeypatch.setattr(Preemption, "setup", setup, raising=False)
    with pytest.raises(Preempted) as stopped:  # Lightning alone would exit 0
        train(compose_train(*RESUME, output_dir=tmp_path / "run"))
    assert stopped.value.code == 143
    assert "Stopped by SIGTERM before the first training step (step 0); nothing new was saved." in str(
        stopped.value
    )
    assert "Start it again with: python -m tiger.train trainer.max_steps=6" in str(stopped.value)
    assert not (tmp_path / "run" / "checkpoints").exists()
