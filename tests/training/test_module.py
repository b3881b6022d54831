"""TigerModule: options checked where they enter, the first non-finite loss stops training, and what the
validation step hands to the metrics."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from tiger.metrics.boundary_matching import NUM_GT
from tiger.options import OptionError
from tiger.training.balancing import FAMO
from tiger.training.losses import LossConfig
from tiger.training.module import TigerModule, check_finite

ADAMW = functools.partial(torch.optim.AdamW, lr=1e-3)


@pytest.fixture(scope="module")
def module(tiny_config):
    def build(**changes) -> TigerModule:
        torch.manual_seed(0)
        arguments = {
            "net": tiny_config(),
            "loss": LossConfig(),
            "optimizer": ADAMW,
            "scheduler": None,
            "dataset": "synthetic",
        }
        return TigerModule(**{**arguments, **changes})

    return build


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"optimizer": functools.partial(torch.optim.AdamW, lr=0.0)}, r"^optimizer.lr must be > 0, got 0.0$"),
        ({"optimizer": functools.partial(torch.optim.AdamW, betas=(0.9, 2.0))}, r"^optimizer is not.*beta"),
        ({"optimizer": functools.partial(torch.optim.SGD, momentum=-1)}, r"^optimizer is not.*momentum"),
        ({"scheduler": {"warmup_steps": 2.5}}, r"^scheduler.warmup_steps must be an integer, got 2.5"),
        ({"scheduler": {"warmup_steps": -1}}, r"^scheduler.warmup_steps must be >= 0, got -1$"),
        ({"scheduler": {"power": -0.9}}, r"^scheduler.power must be >= 0, got -0.9$"),
        ({"scheduler": {"warmup": 10}}, r"^scheduler.warmup is not an option"),
        ({"balancer": "famo"}, r"^balancer must be a balancer config, got 'famo': .* balancer=famo"),
        ({"balancer": functools.partial(FAMO, lr=-1.0)}, r"^balancer.lr must be > 0, got -1.0$"),
    ],
)  # fmt: skip
def test_options_are_checked_where_they_enter(module, changes, message, monkeypatch):
    import tiger.training.module

    if "balancer" not in changes or isinstance(changes["balancer"], str):  # before any expert is built

        def no_model(*args, **kwargs):
            raise AssertionError("the model was built before the options were checked")

        monkeypatch.setattr(tiger.training.module, "build_tiger", no_model)
    with pytest.raises(OptionError, match=message):
        module(**changes)


def test_the_configs_must_be_typed(module, tiny_config):
    with pytest.raises(TypeError, match="takes a TigerConfig and a LossConfig, got dict and LossConfig"):
        module(net=tiny_config().to_dict())


def test_check_finite_names_the_step_and_the_term():
    check_finite(torch.tensor(0.6), {"depth": torch.tensor(0.5), "cf": torch.tensor(0.1)}, 3)
    terms = {"semseg": torch.tensor(1.0), "depth": torch.tensor(float("nan"))}
    with pytest.raises(FloatingPointError, match=r"^step 17: train loss term 'depth' is nan; stopping"):
        check_finite(torch.tensor(float("nan")), terms, 17)
    terms = {"depth": torch.tensor(float("inf")), "cf": torch.tensor(float("nan"))}
    check_finite(torch.tensor(1.0), terms, 1)  # only the total decides; it is finite
    with pytest.raises(FloatingPointError, match=r"^step 1: train loss terms 'depth' is inf, 'cf' is nan;"):
        check_finite(torch.tensor(float("inf")), terms, 1)
    with pytest.raises(FloatingPointError, match=r"^step 2: train loss term 'loss' is inf;"):
        check_finite(torch.tensor(float("inf")), {"depth": torch.tensor(1.0)}, 2)


class TwoProcesses:
    """The part of a Lightning strategy that check_finite uses: here another process saw a NaN."""

    world_size = 2

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        assert all
        return False


def test_every_process_stops_when_one_loss_is_not_finite():
    with pytest.raises(FloatingPointError, match=r"^step 4: the loss of another process is not finite"):
        check_finite(torch.tensor(0.5), {"depth": torch.tensor(0.5)}, 4, TwoProcesses())


class Batches(Dataset):
    """Four batches of one image; the depth target of batch ``bad`` is NaN at one pixel."""

    def __init__(self, bad: int) -> None:
        self.bad = bad

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(index)
        depth = torch.rand(1, 32, 32, generator=g) + 0.5
        if index == self.bad:
            depth[0, 3, 4] = float("nan")
        semseg = torch.randint(0, 3, (32, 32), generator=g)
        return {"image": torch.rand(3, 32, 32, generator=g), "depth": depth, "semseg": semseg}


def test_training_stops_at_the_first_non_finite_loss(module):
    tiger = module()
    trainer = L.Trainer(
        max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        limit_val_batches=0, enable_model_summary=False,
    )  # fmt: skip
    with pytest.raises(FloatingPointError, match=r"^step 2: train loss term 'depth' is nan"):
        trainer.fit(tiger, train_dataloaders=DataLoader(Batches(bad=2), batch_size=1))
    assert trainer.global_step == 2  # steps 0 and 1 ran; nothing was stepped with the NaN


def test_validation_scores_boundaries_against_the_seism_ground_truth(module, tiny_config):
    module = module(net=tiny_config(("dinov2_tiny",), ("edge",), (3, 4)))
    edge = torch.zeros(1, 40, 48)
    edge[0, 20, :] = 1.0  # the training target: one horizontal line
    seism = torch.zeros(1, 40, 48, dtype=torch.uint8)
    seism[0, 10:30, 24] = 1  # the metric's ground truth: a 20-pixel vertical line
    batch = {"image": torch.rand(1, 3, 40, 48), "edge": edge, "edge_seism": seism}
    with torch.no_grad():
        module.validation_step(batch, 0)
    assert int(module.val_metrics["edge"].counts[NUM_GT, 0]) == 20  # not the 48 pixels of the target
    with pytest.raises(KeyError, match="edge_seism"), torch.no_grad():
        module.validation_step({"image": batch["image"], "edge": edge}, 0)
