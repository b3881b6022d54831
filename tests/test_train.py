"""Hydra configs and the training entry point: composition, end-to-end runs, resume, multirun, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from tiger.model.checkpoint import CheckpointError
from tiger.options import OptionError
from tiger.train import train

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
TINY = {
    "clip_b16": "clip_tiny",
    "clip_l14": "clip_tiny",
    "dinov2_b14": "dinov2_tiny",
    "dinov2_l14": "dinov2_tiny",
}
TINY |= {"sam_b": "sam_tiny", "owlv2_l14": "owlv2_tiny"}


def tiny_stand_in(spec: dict) -> dict:
    """A small expert for a configured one: the tiny random versions of the real families, and the study's
    own experts untrained (nothing is pretrained into the user's cache)."""
    if spec["name"].startswith("study_"):
        return {**spec, "weights": None}
    return {"name": TINY[spec["name"]]}


FAST = [
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "data.datamodule.synthetic.num_train=16",
    "data.datamodule.synthetic.num_val=8",
    "data.datamodule.eval_batch_size=4",
    "callbacks.model_checkpoint.every_n_train_steps=2",
]


def run_train(*overrides: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python -m tiger.train``: only for what the command line itself does (Hydra's launchers, signals,
    several processes); every other run is composed and trained in-process (``compose_train``)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "tiger.train", *overrides]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def experiment_names() -> list[str]:
    return sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", experiment_names())
def test_every_experiment_composes_and_instantiates(experiment, monkeypatch, tmp_path, compose_train):
    monkeypatch.setenv("TIGER_DATA", str(tmp_path))  # the data module only resolves the root here
    cfg = compose_train(f"experiment={experiment}")
    assert cfg.experts and cfg.data.tasks and cfg.trainer.max_steps > 0
    sweep = cfg.hydra.sweeper.get("params") or {}
    variants = [[]] + [[f"{group}={value}"] for group, values in sweep.items() for value in values.split(",")]
    for variant in variants[:: max(1, len(variants) - 1)]:  # the base config and the last sweep value
        cfg = compose_train(f"experiment={experiment}", *variant)
        with open_dict(cfg):  # tiny stand-ins for the pretrained experts, a small grid, the real options
            cfg.experts = {
                role: tiny_stand_in(spec) for role, spec in OmegaConf.to_container(cfg.experts).items()
            }
            cfg.data.grid = [2, 3]
            cfg.model.dataset = "synthetic"
        module = instantiate(cfg.model, _convert_="all")
        assert module.net.task_names == list(cfg.data.tasks)
        assert module.net.grid == (2, 3)
        assert module.balancer.lambda_cf == cfg.model.loss.lambda_cf
        assert module.loss_config.target == cfg.model.loss.target
        trainer = instantiate(cfg.trainer, accelerator="cpu", devices=1, precision="32-true", logger=False)
        assert trainer.max_steps == cfg.trainer.max_steps
        datamodule = instantiate(cfg.data.datamodule, _convert_="all")
        assert datamodule.num_semseg_classes == cfg.data.num_semseg_classes


def test_ablation_rows_switch_the_components(compose_train):
    rows = {}
    for ablation in ("t3_1_routing", "t3_2_instructions", "t3_4_task_interaction", "t3_5_counterfactual"):
        cfg = compose_train("experiment=nyud_table3", f"ablation={ablation}")
        net, loss = cfg.model.net, cfg.model.loss
        rows[ablation] = (
            net.instructions.encoder,
            net.expert_interaction,
            net.task_interaction,
            loss.lambda_cf,
        )
    assert rows["t3_1_routing"] == (None, False, False, 0.0)
    assert rows["t3_2_instructions"][0] == "all-MiniLM-L6-v2"
    assert rows["t3_4_task_interaction"] == ("all-MiniLM-L6-v2", True, True, 0.0)
    assert rows["t3_5_counterfactual"][3] > 0
    assert compose_train("experiment=nyud_vfm_baselines", "experts=dinov2_l14").experts.keys() == {"dinov2"}


def test_unknown_config_key_or_value_fails_with_hydras_message(compose_train):
    from hydra.errors import ConfigCompositionException

    for override, message in (
        ("model.net.no_such_key=1", "no_such_key"),
        ("experiment=nyud_tiger_x", "nyud_tiger_x"),
    ):
        with pytest.raises(ConfigCompositionException, match=message):
            compose_train(override)


def test_option_errors_name_the_key_the_user_sets(compose_train):
    from tiger.train import instantiate_option, user_key

    cfg = compose_train("data.grid=[4.5,5]")
    assert user_key(cfg, "model.net.grid") == "data.grid"  # model.net.grid is ${data.grid}
    assert user_key(cfg, "model.net.task_weights.edge") == "data.task_weights.edge"
    assert user_key(cfg, "model.net.experts.sam.seed") == "experts.sam.seed"
    assert user_key(cfg, "data.datamodule.tasks") == "data.tasks"
    assert user_key(cfg, "model.loss.tau") == "model.loss.tau"
    cases = [  # (overrides, the config node instantiated, the message)
        (["data.grid=[4.5,5]"], "model", r"^data.grid must be 2 integers \(H, W\) >= 1, got \[4.5, 5\]"),
        (["model.loss.tau=0"], "model", r"^model.loss.tau must be > 0, got 0$"),
        (["model.loss.target=softmax"], "model", r"^model.loss.target must be one of 'zscore', 'positive'"),
        (["model.net.dim=30"], "model", r"^model.net.num_heads must divide dim=30, got 4$"),
        (["+model.net.instructions.texts={depth: ''}"], "model", r"^model.net.instructions.texts.depth must"),
        (["data.task_weights.depth=-1"], "model", r"^data.task_weights.depth must be >= 0, got -1$"),
        (["+experts.sam.pos_embed_antialias=no"], "model", r"^experts.sam.pos_embed_antialias must be true"),
        (["model.balancer=famo"], "model", r"^model.balancer must be a balancer config, got 'famo'"),
        (["balancer=famo", "model.balancer.lr=0"], "model", r"^model.balancer.lr must be > 0, got 0"),
        (["data.datamodule.batch_size=0"], "data.datamodule", r"^data.datamodule.batch_size must be >= 1"),
        (["callbacks.routing.removals=[drop]"], "callbacks.routing", r"^callbacks.routing.removals must"),
    ]  # fmt: skip
    for overrides, key, message in cases:
        with pytest.raises(OptionError, match=message):
            instantiate_option(compose_train(*overrides), key)


def test_a_fractional_grid_stops_the_run_at_once(tmp_path, compose_train):
    run_dir = tmp_path / "run"
    expected = r"^data.grid must be 2 integers \(H, W\) >= 1, got \[4.5, 5\] \(4.5 is not an integer >= 1\)"
    with pytest.raises(OptionError, match=expected):
        train(compose_train("data.grid=[4.5,5]", output_dir=run_dir))
    assert not (run_dir / "checkpoints").exists()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """The embedded default, shortened, through the command line (the one end-to-end run of ``python -m``)."""
    base = tmp_path_factory.mktemp("run")
    run_dir = base / "out"
    result = run_train(*FAST, f"hydra.run.dir={run_dir}", cwd=base)
    assert "Checkpoint:" in result.stdout and "Routing figure:" in result.stdout
    return run_dir


def test_end_to_end_training_writes_results_checkpoint_and_figure(trained_run):
    results = json.loads((trained_run / "results.json").read_text())
    assert set(results["metrics"]) == {"semseg", "depth", "normals", "edge", "sal", "human_parts"}
    assert 0 <= results["metrics"]["semseg"]["mIoU"] <= 100
    assert Path(results["routing_figure"]).is_file()
    checkpoint = torch.load(results["checkpoint"], weights_only=True, map_location="cpu")
    assert checkpoint["tiger"]["tasks"] == ["semseg", "depth", "normals", "edge", "sal", "human_parts"]
    assert [e["name"] for e in checkpoint["tiger"]["experts"]] == [
        "clip_tiny",
        "dinov2_tiny",
        "sam_tiny",
        "owlv2_tiny",
    ]
    assert not any(".experts." in key for key in checkpoint["state_dict"])
    assert "net.task_representation.instruction_embeddings" in checkpoint["state_dict"]
    usage = results["routing"]["usage"]
    assert all(sum(row.values()) == pytest.approx(1.0, abs=1e-4) for row in usage.values())
    assert [entry["step"] for entry in results["routing_history"]] == [0, 1, 2, 3]  # every log_every_n_steps
    metrics_csv = (trained_run / "csv" / "metrics.csv").read_text()
    assert (
        "train/cf" in metrics_csv
        and "val/semseg/mIoU" in metrics_csv
        and "val/usage/depth/sam_tiny" in metrics_csv
    )


def test_checkpoint_from_another_configuration_is_refused(trained_run, tmp_path, compose_train):
    from tiger.model.checkpoint import check_fits as check_compatible

    checkpoint = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    identity = dict(checkpoint["tiger"])
    identity["experts"] = identity["experts"][:2]
    with pytest.raises(ValueError, match="experts: checkpoint .*owlv2_tiny.* vs configured"):
        check_compatible(checkpoint, identity)
    identity = {**checkpoint["tiger"], "tasks": ["semseg", "depth"]}
    with pytest.raises(ValueError, match="tasks: checkpoint"):
        check_compatible(checkpoint, identity)
    with pytest.raises(ValueError, match="not a TIGER checkpoint"):
        check_compatible({"state_dict": {}}, identity)
    # through train(): resume the 6-task run (at its last step, 4) with two tasks, to train further
    cfg = compose_train(
        *FAST,
        "trainer.max_steps=8",
        f"ckpt_path={trained_run}",
        "data.tasks=[semseg,depth]",
        output_dir=tmp_path / "other",
    )
    with pytest.raises(CheckpointError, match="tasks: checkpoint"):
        train(cfg)


def test_killed_run_resumes_where_it_stopped(tmp_path):
    first = tmp_path / "first"
    overrides = [*FAST, "trainer.max_steps=30", "trainer.val_check_interval=1000", "final_report=false"]
    overrides += ["callbacks.model_checkpoint.every_n_train_steps=3"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "tiger.train", *overrides, f"hydra.run.dir={first}"]
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    last = first / "checkpoints" / "last.ckpt"
    deadline = time.time() + 200
    while time.time() < deadline and process.poll() is None:
        if last.is_file() and torch.load(last, weights_only=True)["global_step"] >= 6:
            break
        time.sleep(0.5)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    stopped_at = torch.load(last, weights_only=True)["global_step"]
    assert 6 <= stopped_at < 30
    before = {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()}

    second = tmp_path / "second"
    run_train(*overrides, f"ckpt_path={first}", f"hydra.run.dir={second}", cwd=tmp_path)
    resumed = torch.load(second / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 30
    logged = (second / "csv" / "metrics.csv").read_text().splitlines()
    steps = [int(line.split(",")[header_index(logged[0], "step")]) for line in logged[1:]]
    assert min(steps) >= stopped_at - 1  # continued from the checkpoint, not from step 0
    assert before == {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()}  # untouched


def header_index(header: str, name: str) -> int:
    return header.split(",").index(name)


RESUME = [  # 3 batches an epoch, validation at steps 3 and 6, last.ckpt every 2 steps; no semseg task
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


def train_losses(run_dir: Path) -> dict[int, float]:
    import csv

    with open(run_dir / "csv" / "metrics.csv") as file:
        return {
            int(row["step"]): float(row["train/loss"]) for row in csv.DictReader(file) if row["train/loss"]
        }


def test_killed_and_resumed_run_reproduces_the_uninterrupted_run(tmp_path, monkeypatch, compose_train):
    from tiger.training.callbacks import LastCheckpoint

    full = train(compose_train(*RESUME, output_dir=tmp_path / "full"))
    assert full["monitor"] == "val/depth/rmse" and set(full["metrics"]) == {"depth", "normals"}

    class Killed(Exception):
        pass

    def kill_after_step_4(self, trainer, *args) -> None:
        if trainer.global_step == 4:  # last.ckpt of step 4 is written; step 5 never runs
            raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(LastCheckpoint, "on_train_batch_start", kill_after_step_4, raising=False)
        with pytest.raises(Killed):
            train(compose_train(*RESUME, "final_report=false", output_dir=tmp_path / "first"))
    checkpoints = tmp_path / "first" / "checkpoints"
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 4
    resumed = train(compose_train(*RESUME, f"ckpt_path={tmp_path / 'first'}", output_dir=tmp_path / "second"))

    expected = train_losses(tmp_path / "full")
    assert len(expected) == 6
    first, second = train_losses(tmp_path / "first"), train_losses(tmp_path / "second")
    assert sorted(first) == sorted(expected)[:4] and sorted(second) == sorted(expected)[4:]
    for step, loss in {**first, **second}.items():
        assert loss == pytest.approx(expected[step], rel=1e-6, abs=1e-6), step
    for task, values in full["metrics"].items():
        for name, value in values.items():
            assert resumed["metrics"][task][name] == pytest.approx(value, rel=1e-6, abs=1e-6), (task, name)
    assert resumed["routing_history"] == full["routing_history"]  # kept in the checkpoint across the kill


def test_multirun_gives_each_run_its_own_directory(tmp_path):
    sweep = tmp_path / "sweep"
    run_train(
        "-m",
        *FAST,
        "final_report=true",
        "model.loss.lambda_cf=0.0,0.2",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    runs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in runs] == ["0", "1"]
    for run in runs:
        assert (run / "results.json").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    gathered = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gather_results.py"), str(sweep), "--json",
         str(tmp_path / "t.json")],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert gathered.returncode == 0, gathered.stderr
    assert "model.loss.lambda_cf=0.0" in gathered.stdout and "model.loss.lambda_cf=0.2" in gathered.stdout
    table = json.loads((tmp_path / "t.json").read_text())
    assert set(table) == {"train: model.loss.lambda_cf=0.0", "train: model.loss.lambda_cf=0.2"}
    for run, entry in zip(runs, table.values(), strict=True):
        results = json.loads((run / "results.json").read_text())
        assert entry["metrics"]["semseg"]["mean"] == results["metrics"]["semseg"]["mIoU"]
        assert entry["seeds"] == [42] and entry["usage"]["depth"]["clip_tiny"]["std"] == 0.0


def test_two_process_ddp_on_cpu_gives_the_single_process_metrics(tmp_path, compose_train):
    # One image per batch on both sides: batches of other compositions change the logits by float
    # round-off, enough to flip boundary NMS on a barely trained model's near-flat maps.
    single_images = [*FAST, "data.datamodule.eval_batch_size=1"]
    run_dir = tmp_path / "ddp"
    run_train(*single_images, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
              f"hydra.run.dir={run_dir}",
              cwd=tmp_path, timeout=400)  # fmt: skip
    results = json.loads((run_dir / "results.json").read_text())
    # the same checkpoint validated in one process
    import lightning as L

    from tiger.analysis.report import split_metrics

    config = compose_train(*single_images)
    datamodule = instantiate(config.data.datamodule, _convert_="all")
    module = instantiate(config.model, _convert_="all")
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    (logged,) = trainer.validate(
        module, datamodule=datamodule, ckpt_path=results["checkpoint"], weights_only=True
    )
    for task, values in split_metrics(logged, module.net.task_names).items():
        for name, value in values.items():
            assert results["metrics"][task][name] == pytest.approx(value, rel=1e-4, abs=1e-4), (task, name)


def test_a_callback_or_logger_set_to_null_is_switched_off(compose_train):
    from tiger.train import configured

    assert "best_checkpoint" in configured(compose_train(), "callbacks")
    assert "best_checkpoint" not in configured(compose_train("callbacks.best_checkpoint=null"), "callbacks")
    assert configured(compose_train("logger.csv=null"), "logger") == []


def test_an_experiment_sets_its_own_task_name_and_seed(compose_train):
    # train.yaml's own keys come first in its defaults, so an experiment overrides them (outputs/<task_name>)
    cfg = compose_train("experiment=study_temperature")
    assert cfg.task_name == "study_temperature" and cfg.seed == 0
    assert compose_train().task_name == "train" and compose_train().seed == 42
