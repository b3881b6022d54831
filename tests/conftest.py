"""Test-wide settings (everything runs offline, on the CPU, in temporary folders) and shared fixtures.

- ``tiny_config``: a factory of small :class:`~tiger.model.TigerConfig` objects (tiny random experts, no
  instruction encoder) that every model, loss and module test builds on.
- ``compose_train``: the training config composed in-process the lightning-hydra-template way, ready for
  :func:`tiger.train.train` (only the tests of the command line itself start ``python -m tiger.train``).
- ``tiny_checkpoint``: one short training run (synthetic scenes, tiny experts, 2 steps) per test session
  (per xdist worker), reused by the inference, CLI and notebook tests.
- ``study_multirun``: a small known-answer study (one seed, a short training), reused by the study and
  notebook tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "MPLBACKEND": "Agg",
}
for key, value in OFFLINE.items():
    os.environ.setdefault(key, value)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

TINY_SIZES = {
    "dim": 32,
    "rank": 4,
    "hyper_hidden": 16,
    "query_width": 16,
    "num_heads": 4,
    "decoder_width": 32,
}
"""The smallest model sizes every check accepts (GroupNorm, heads, query width)."""

TRAIN_OVERRIDES = (  # as small as a real run gets: 2 steps of 2 images, validation and a checkpoint each
    "trainer.max_steps=2",
    "trainer.val_check_interval=1",
    "trainer.enable_progress_bar=false",
    "data.datamodule.synthetic.num_train=4",
    "data.datamodule.synthetic.num_val=2",
    "data.datamodule.batch_size=2",
    "data.datamodule.eval_batch_size=2",
    "callbacks.model_checkpoint.every_n_train_steps=1",
    "final_report=false",
)


def make_tiny_config(
    experts: Any = ("clip_tiny",),
    tasks: tuple[str, ...] = ("semseg", "depth"),
    grid: tuple[int, int] = (2, 2),
    **changes: Any,
):
    """A small model config: tiny experts (names: role = family; or specs as TigerConfig takes them),
    learnable task embeddings, :data:`TINY_SIZES`."""
    from tiger.model import TigerConfig

    if isinstance(experts, tuple | list) and all(isinstance(name, str) for name in experts):
        experts = {name.removesuffix("_tiny"): {"name": name} for name in experts}
    options = {
        "experts": experts,
        "tasks": list(tasks),
        "grid": list(grid),
        "num_semseg_classes": 5,
        "instructions": {"encoder": None},
        **TINY_SIZES,
    }
    return TigerConfig(**{**options, **changes})


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., Any]:
    """The factory :func:`make_tiny_config`."""
    return make_tiny_config


def subprocess_env() -> dict[str, str]:
    """The environment for subprocesses: offline, on the CPU, no GUI backend, this checkout first."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {"CUDA_VISIBLE_DEVICES": "", **os.environ, **OFFLINE, "PYTHONPATH": path}


@pytest.fixture(scope="session")
def offline_env() -> Callable[[], dict[str, str]]:
    """A function that gives a fresh environment for a test's subprocess (see :func:`subprocess_env`)."""
    return subprocess_env


def compose_config(*overrides: str, output_dir: Path | None = None):
    """``train.yaml`` composed with ``overrides``; with ``output_dir``, as the task function sees it (the run
    folder set, Hydra's runtime config registered, the ``hydra`` node removed)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    if output_dir is None:
        return cfg
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.paths.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    output_dir.mkdir(parents=True, exist_ok=True)
    return cfg


@pytest.fixture
def compose_train() -> Iterator[Callable[..., Any]]:
    """The factory :func:`compose_config` (with ``output_dir=`` for :func:`tiger.train.train`)."""
    from hydra.core.global_hydra import GlobalHydra

    yield compose_config
    GlobalHydra.instance().clear()


def train_tiny_checkpoint(run_dir: Path) -> Path:
    """Train for 2 steps into ``run_dir``, in this process (once: later calls return the checkpoint)."""
    from hydra.core.global_hydra import GlobalHydra

    from tiger.train import train

    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    if not checkpoint.is_file():
        train(compose_config(*TRAIN_OVERRIDES, output_dir=run_dir))
        GlobalHydra.instance().clear()
    return checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of ``last.ckpt`` of a 2-step run on synthetic scenes with the tiny experts."""
    return train_tiny_checkpoint(tmp_path_factory.getbasetemp() / "tiny_tiger_run")


STUDY_OVERRIDES = (  # the known-answer study at its smallest: one seed, depth and edge, 80 steps
    "experiment=study_tiger",
    "experts=study_boundary,study_pair",
    "seed=0",
    "data.tasks=[depth,edge]",
    "data.datamodule.synthetic.num_train=64",
    "data.datamodule.synthetic.num_val=8",
    "trainer.max_steps=80",
    "hydra.launcher.n_jobs=1",
    "trainer.val_check_interval=40",
    "callbacks.model_checkpoint.every_n_train_steps=80",
)


@pytest.fixture(scope="session")
def study_multirun(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The multirun folder of a small study: the boundary expert alone, and TIGER over geometry, boundary
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
