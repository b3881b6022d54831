"""Test-wide settings (everything runs offline, on the CPU, in temporary folders) and shared fixtures.

``tiny_checkpoint``: one short run of ``python -m tiger.train`` (synthetic scenes, tiny experts, 2 steps)
per test session (per xdist worker), reused by the inference, CLI and notebook tests.
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
