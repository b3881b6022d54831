"""Sweeps on a cluster through Hydra's submitit launcher: the path runs here with submitit's local executor,
and the SLURM preset gives the job script a cluster needs (tasks, nodes, GPUs, signal, requeue)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import tiger.training.runs  # noqa: F401 - registers the tiger_run_name resolver of the run folders

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[slurm]'")

FAST = [
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "trainer.enable_progress_bar=false",
    "data.datamodule.synthetic.num_train=8",
    "data.datamodule.synthetic.num_val=4",
    "data.datamodule.batch_size=2",
    "data.datamodule.eval_batch_size=4",
    "callbacks.model_checkpoint.every_n_train_steps=2",
    "torch_threads=1",
]


def test_a_multirun_through_submitits_local_executor_is_gathered(tmp_path, offline_env):
    sweep = tmp_path / "sweep"
    command = [sys.executable, "-m", "tiger.train", "-m", "hydra/launcher=submitit_local", *FAST,
               "model.loss.lambda_cf=0.0,0.2", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    result = subprocess.run(
        command, cwd=tmp_path, env=offline_env(), capture_output=True, text=True, timeout=400
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for job in ("0", "1"):
        assert (sweep / job / "results.json").is_file() and (
            sweep / job / "checkpoints" / "last.ckpt"
        ).is_file()
    assert (sweep / ".submitit").is_dir()  # the jobs ran as submitit jobs
    table_file = tmp_path / "table.json"
    gather = [
        sys.executable,
        str(ROOT / "scripts" / "gather_results.py"),
        str(sweep),
        "--json",
        str(table_file),
    ]
    gathered = subprocess.run(gather, capture_output=True, text=True, env=offline_env())
    assert gathered.returncode == 0, gathered.stderr[-3000:]
    table = json.loads(table_file.read_text())
    assert set(table) == {"train: model.loss.lambda_cf=0.0", "train: model.loss.lambda_cf=0.2"}
    for job, entry in zip(("0", "1"), table.values(), strict=True):
        results = json.loads((sweep / job / "results.json").read_text())
        assert entry["metrics"]["semseg"]["mean"] == results["metrics"]["semseg"]["mIoU"]


def sbatch_script(tmp_path: Path, monkeypatch, compose_config, *overrides: str) -> str:
    """The job script that ``hydra/launcher=slurm`` submits for one job (nothing is submitted)."""
    import submitit
    from hydra.core.utils import JobReturn
    from hydra.utils import instantiate

    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "srun").write_text("#!/bin/sh\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    cfg = compose_config("hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides)
    launcher = instantiate(cfg.hydra.launcher)
    launcher.config = cfg
    scripts: list[str] = []

    class Job:
        def results(self) -> list[JobReturn]:
            return [JobReturn()]

    def map_array(executor, *args):
        scripts.append(
            executor._executor._make_submission_file_text("python -m submitit.core._submit", "uid")
        )
        return [Job()]

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", map_array)
    launcher.launch([["seed=1"]], initial_job_idx=0)
    return scripts[0]


def test_the_slurm_preset_asks_for_one_task_per_gpu_and_signals_before_the_time_limit(
    tmp_path, monkeypatch, compose_train
):
    script = sbatch_script(
        tmp_path, monkeypatch, compose_train, "hydra.launcher.partition=gpu", "hydra.launcher.account=proj"
    )
    expected = ["--partition=gpu", "--account=proj", "--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=1"]
    expected += ["--cpus-per-task=8", "--mem=64GB", "--time=1440", "--signal=USR1@120", "--requeue"]
    for line in expected:
        assert f"#SBATCH {line}\n" in script, (line, script)
    assert "USR2" not in script  # submitit's own signal, which would stop the job mid-step
    ddp = sbatch_script(
        tmp_path, monkeypatch, compose_train, "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"
    )
    for line in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4"):
        assert f"#SBATCH {line}\n" in ddp, (line, ddp)
    assert "srun" in ddp  # one process per task: Lightning's SLURMEnvironment reads the ranks
    cfg_text = OmegaConf.to_yaml(OmegaConf.load(ROOT / "conf" / "hydra" / "launcher" / "slurm.yaml"))
    assert "partition: null" in cfg_text and "account: null" in cfg_text  # left to the user's cluster
