"""Test-wide settings (everything runs offline, on the CPU, in temporary folders) and shared fixtures.

``tiny_checkpoint``: one short run of ``python -m tiger.train`` (synthetic scenes, tiny experts, 2 steps)
per test session (per xdist worker), reused by the inference, CLI and notebook tests.
``study_multirun``: a small known-answer study (one seed, two tasks, a short training), reused by the study
and notebook tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "MPLBACKEND": "Agg",
}
for key, value in OFFLINE.items():
    os.environ.setdefault(key, value)

TRAIN_OVERRIDES = (  # as small as a real run gets: 2 steps of 2 images, validation and a checkpoint each
    "trainer.max_steps=2",
    "trainer.val_check_interval=1",
    "data.datamodule.synthetic.num_train=4",
    "data.datamodule.synthetic.num_val=2",
    "data.datamodule.batch_size=2",
    "data.datamodule.eval_batch_size=2",
    "callbacks.model_checkpoint.every_n_train_steps=1",
    "final_report=false",
)


def subprocess_env() -> dict[str, str]:
    """The environment for subprocesses: offline, on the CPU, no GUI backend."""
    return {"CUDA_VISIBLE_DEVICES": "", **os.environ, **OFFLINE}


def train_tiny_checkpoint(run_dir: Path) -> Path:
    """Train for 2 steps into ``run_dir`` (once: later calls return the existing checkpoint)."""
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    if checkpoint.is_file():
        return checkpoint
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "tiger.train", *TRAIN_OVERRIDES, f"hydra.run.dir={run_dir}"]
    result = subprocess.run(
        command, cwd=run_dir, env=subprocess_env(), capture_output=True, text=True, timeout=600
    )
    if result.returncode != 0 or not checkpoint.is_file():
        raise RuntimeError(
            f"the tiny training run failed (exit {result.returncode}, no {checkpoint}?):\n"
            f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        )
    return checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of ``last.ckpt`` of a 2-step run on synthetic scenes with the tiny experts."""
    return train_tiny_checkpoint(tmp_path_factory.getbasetemp() / "tiny_tiger_run")


@pytest.fixture(scope="session")
def offline_env() -> Callable[[], dict[str, str]]:
    """A function that gives a fresh environment for a test's subprocess (see :func:`subprocess_env`)."""
    return subprocess_env


STUDY_OVERRIDES = (  # the known-answer study at its smallest: one seed, depth and edge, 60 steps
    "experiment=study_tiger",
    "experts=study_geometry,study_pair",
    "seed=0",
    "data.tasks=[depth,edge]",
    "data.datamodule.synthetic.num_train=128",
    "data.datamodule.synthetic.num_val=16",
    "trainer.max_steps=60",
    "hydra/launcher=basic",
    "trainer.val_check_interval=30",
    "callbacks.model_checkpoint.every_n_train_steps=60",
)


@pytest.fixture(scope="session")
def study_multirun(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The multirun folder of a small study: the geometry expert alone, and TIGER over geometry, boundary
    and the two distractors (``conf/experts/study_pair.yaml``); the study experts are pretrained into a
    temporary cache."""
    base = tmp_path_factory.getbasetemp()
    sweep = base / "study_multirun"
    if (sweep / "1" / "results.json").is_file():
        return sweep
    env = {**subprocess_env(), "TIGER_CACHE": str(base / "tiger_cache")}
    command = [sys.executable, "-m", "tiger.train", "-m", *STUDY_OVERRIDES, f"hydra.sweep.dir={sweep}"]
    result = subprocess.run(command, cwd=base, env=env, capture_output=True, text=True, timeout=900)
    if result.returncode != 0 or not (sweep / "1" / "results.json").is_file():
        raise RuntimeError(
            f"the study multirun failed (exit {result.returncode}):\n{result.stdout[-2000:]}\n"
            f"{result.stderr[-4000:]}"
        )
    return sweep
