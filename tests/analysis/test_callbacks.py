"""RoutingMonitor: the routing figure and the usage table reach the run's logger at every validation
(TensorBoard, read back from its event file; W&B through its logger's API), bounded, off with one option."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hydra.core.global_hydra import GlobalHydra
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tiger.analysis.callbacks import FIGURE_SIDE, ROUTING_FIGURE, USAGE_TABLE, RoutingMonitor, log_routing
from tiger.options import OptionError

TRAIN = (  # two validations (steps 1 and 2) of a small model: two experts, two tasks
    "trainer.max_steps=2",
    "trainer.val_check_interval=1",
    "trainer.enable_progress_bar=false",
    "~experts.sam",
    "~experts.owlv2",
    "data.tasks=[semseg,depth]",
    "model.net.instructions.encoder=null",
    "data.datamodule.synthetic.num_train=4",
    "data.datamodule.synthetic.num_val=2",
    "data.datamodule.batch_size=2",
    "data.datamodule.eval_batch_size=2",
    "callbacks.model_checkpoint.every_n_train_steps=2",
    "final_report=false",
)
USAGE = {"semseg": {"clip_tiny": 0.25, "dinov2_tiny": 0.75}, "depth": {"clip_tiny": 0.5, "dinov2_tiny": 0.5}}


def tensorboard_events(run: Path) -> EventAccumulator:
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    return events


def test_tensorboard_receives_the_routing_figure_and_usage_table_at_every_validation(
    compose_train, tmp_path: Path
) -> None:
    from tiger.train import train

    train(compose_train("logger=tensorboard", *TRAIN, output_dir=tmp_path / "run"))
    GlobalHydra.instance().clear()
    events = tensorboard_events(tmp_path / "run")
    images = events.Images(ROUTING_FIGURE)
    assert [image.step for image in images] == [1, 2]  # one figure per validation
    for image in images:
        assert max(image.width, image.height) <= FIGURE_SIDE and min(image.width, image.height) > 100
    tables = events.Tensors(f"{USAGE_TABLE}/text_summary")
    assert [table.step for table in tables] == [1, 2]
    text = tables[-1].tensor_proto.string_val[0].decode()
    assert "clip_tiny" in text and "dinov2_tiny" in text and "semseg" in text and "%" in text
    assert any(tag.startswith("val/usage/semseg/") for tag in events.Tags()["scalars"])


def test_log_figures_false_sends_no_figure(compose_train, tmp_path: Path) -> None:
    from tiger.train import train

    overrides = ("logger=tensorboard", *TRAIN, "trainer.max_steps=1", "callbacks.routing.log_figures=false")
    train(compose_train(*overrides, output_dir=tmp_path / "run"))
    GlobalHydra.instance().clear()
    tags = tensorboard_events(tmp_path / "run").Tags()
    assert tags["images"] == [] and f"{USAGE_TABLE}/text_summary" not in tags["tensors"]
    assert any(tag.startswith("val/usage/") for tag in tags["scalars"])  # the scalars still are logged


def test_wandb_gets_the_figure_and_table_through_its_logger_api() -> None:
    logger = mock.create_autospec(WandbLogger, instance=True)
    figure = np.zeros((40, 60, 3), np.uint8)
    log_routing(logger, figure, USAGE, step=7)
    logger.log_image.assert_called_once_with(key=ROUTING_FIGURE, images=[figure], step=7)
    logger.log_table.assert_called_once_with(
        key=USAGE_TABLE,
        columns=["task", "clip_tiny %", "dinov2_tiny %"],
        data=[["semseg", 25.0, 75.0], ["depth", 50.0, 50.0]],
        step=7,
    )


def test_a_csv_logger_gets_no_picture_and_nothing_is_printed(tmp_path: Path, capsys) -> None:
    logger = CSVLogger(tmp_path, name="csv", version="")
    log_routing(logger, np.zeros((40, 60, 3), np.uint8), USAGE, step=1)
    assert list(tmp_path.iterdir()) == [] and capsys.readouterr() == ("", "")


def test_log_figures_must_be_a_switch() -> None:
    with pytest.raises(OptionError, match="^log_figures must be true or false, got 'no'"):
        RoutingMonitor(log_figures="no")
