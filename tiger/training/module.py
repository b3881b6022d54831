"""The LightningModule that trains TIGER: the training step (forward, counterfactual forward, the terms of
the objective, eq. 14's total from the balancer), the validation step with the protocol metrics, and the
optimiser with its schedule.

What a run learns about routing (expert usage, faithfulness) is observed by a callback,
:class:`tiger.analysis.callbacks.RoutingMonitor`: ``training_step`` returns the batch's routing weights and
``validation_step`` the forward pass, for the callbacks that want them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import Strategy
from torch import Tensor, nn

from tiger.metrics import build_metric
from tiger.model import checkpoint
from tiger.model.build import build_tiger
from tiger.model.config import TigerConfig
from tiger.model.tiger import TigerOutput
from tiger.options import OptionError, integer, option_prefix, real
from tiger.tasks import metric_target
from tiger.training.balancing import FixedWeights, TaskBalancer
from tiger.training.losses import LossConfig, TigerLoss

BALANCERS = ("fixed", "famo", "gradnorm", "uncertainty")


def warmup_poly_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, power: float = 0.9
) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up for ``warmup_steps``, then polynomial decay to zero at ``total_steps``."""
    decay = torch.optim.lr_scheduler.PolynomialLR(optimizer, max(1, total_steps - warmup_steps), power)
    if warmup_steps <= 0:
        return decay
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, 1e-3, 1.0, warmup_steps)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, decay], [warmup_steps])


class TigerModule(L.LightningModule):
    """Trains :class:`tiger.model.TIGER`.

    Args:
        net: the model's config (``model.net``; stored in every checkpoint, so the model can be rebuilt).
        loss: the objective's options (``model.loss``).
        optimizer: a partial optimizer taking ``params``; its ``lr`` must be > 0.
        scheduler: ``{"warmup_steps": int >= 0, "power": float >= 0}`` for :func:`warmup_poly_schedule`,
            or None.
        dataset: ``nyud``, ``pascal`` or ``synthetic``: picks the metric options.
        balancer: a partial :class:`tiger.training.balancing.TaskBalancer` taking the tasks and lambda_cf
            (``conf/balancer/``); None: :class:`~tiger.training.balancing.FixedWeights`, the lambda_j of
            eq. 14.

    Every option is checked before the experts are built; an :class:`tiger.options.OptionError` names it
    (``optimizer.lr``, ``scheduler.power``, ``balancer.lr``). Training stops at the first non-finite loss,
    naming the step and the term (:func:`check_finite`).
    """

    def __init__(
        self,
        net: TigerConfig,
        loss: LossConfig,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Mapping[str, Any] | None,
        dataset: str,
        balancer: Callable[..., TaskBalancer] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(net, TigerConfig) or not isinstance(loss, LossConfig):
            raise TypeError(
                f"TigerModule takes a TigerConfig and a LossConfig, got {type(net).__name__} and "
                f"{type(loss).__name__} (conf/model/tiger.yaml builds them)"
            )
        self.loss_config = loss
        self.scheduler_options = check_scheduler(dict(scheduler)) if scheduler else None
        check_optimizer(optimizer)
        check_balancer(balancer)
        with option_prefix("net"):
            self.net = build_tiger(net)
        self.criterion = TigerLoss(self.net.tasks, loss)
        with option_prefix("balancer"):
            self.balancer = (balancer or FixedWeights)(self.net.tasks, lambda_cf=loss.lambda_cf)
        self._balanced_at_step = -1
        self.optimizer_factory = optimizer
        self.dataset = dataset
        self.val_metrics = nn.ModuleDict({task.name: build_metric(task, dataset) for task in self.net.tasks})

    def forward(self, images: Tensor) -> TigerOutput:
        return self.net(images)

    def _targets(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        missing = [name for name in self.net.task_names if name not in batch]
        if missing:
            raise KeyError(f"the batch has no target for tasks {missing}; it has keys {sorted(batch)}")
        return {name: batch[name] for name in self.net.task_names}

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Tensor]:
        """Eq. 14 on one batch; returns ``{"loss", "alpha"}`` (alpha detached, for the callbacks)."""
        output = self.net(batch["image"])
        counterfactual = None
        if self.criterion.uses_counterfactual(len(self.net.experts)):
            counterfactual = self.net.counterfactual(output, self.loss_config.removal, self.loss_config.eps)
        terms = self.criterion(output, self._targets(batch), counterfactual)
        loss = self.balancer(terms, output.fused)  # eq. 14
        self._balanced_at_step = self.global_step
        check_finite(loss, terms, self.global_step, self._trainer and self._trainer.strategy)
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, on_step=True)
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True)
        weights = zip(self.balancer.task_names, self.balancer.weights(), strict=True)
        self.log_dict({f"train/weight/{name}": value for name, value in weights}, on_step=True)
        return {"loss": loss, "alpha": output.alpha.detach()}

    def on_train_batch_end(self, outputs: Any, batch: Mapping[str, Any], batch_idx: int) -> None:
        """FAMO: after each optimizer step, the task losses of the same batch at the new parameters."""
        if not self.balancer.needs_losses_after_step or self.trainer.global_step <= self._balanced_at_step:
            return  # no balancer that asks for it, or no optimizer step (gradient accumulation)
        with torch.no_grad(), self.trainer.precision_plugin.forward_context():
            terms = self.criterion(self.net(batch["image"]), self._targets(batch))
        self.balancer.after_step(terms)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> TigerOutput:
        """The protocol metrics and ``val/loss`` (eq. 14's task part); returns the forward pass."""
        output = self.net(batch["image"])
        terms = self.criterion(output, self._targets(batch))
        self.log(
            "val/loss",
            self.balancer(terms),
            prog_bar=True,
            sync_dist=True,
            batch_size=batch["image"].shape[0],
        )
        for task in self.net.tasks:
            self.val_metrics[task.name].update(
                task.postprocess(output.predictions[task.name]), metric_target(task.name, batch)
            )
        return output

    def on_validation_epoch_end(self) -> None:
        for name, metric in self.val_metrics.items():
            values = metric.compute()
            metric.reset()
            # float64: the results table and results.json keep the metric's own precision
            logged = {
                f"val/{name}/{key}": torch.as_tensor(v, dtype=torch.float64) for key, v in values.items()
            }
            self.log_dict(logged)

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params=params)
        if self.scheduler_options is None:
            return {"optimizer": optimizer}
        total = (
            self.trainer.max_steps if self.trainer.max_steps > 0 else self.trainer.estimated_stepping_batches
        )
        scheduler = warmup_poly_schedule(optimizer, int(total), **self.scheduler_options)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # checkpoints: only what was trained, plus what rebuilds the frozen parts (tiger.model.checkpoint)
    def checkpoint_identity(self) -> dict[str, Any]:
        return checkpoint.tiger_section(self.net, self.loss_config.to_dict(), self.dataset)

    def on_save_checkpoint(self, saved: dict[str, Any]) -> None:
        saved["state_dict"] = checkpoint.trainable_state(saved["state_dict"])
        saved[checkpoint.SECTION] = self.checkpoint_identity()

    def on_load_checkpoint(self, saved: dict[str, Any]) -> None:
        source = getattr(self._trainer, "ckpt_path", None) or ""  # the file, when Lightning reads one
        checkpoint.check_fits(saved, self.checkpoint_identity(), source)
        checkpoint.load_trainable(self.net, saved["state_dict"], source)  # names any key or shape difference
        saved["state_dict"].update(checkpoint.frozen_state(self.net))  # for Lightning's own strict load


def check_balancer(balancer: Any) -> None:
    """A balancer is a partial class (``balancer=<name>``), never a bare name (``model.balancer=famo``)."""
    if balancer is not None and not callable(balancer):
        raise OptionError(
            "balancer",
            f"must be a balancer config, got {balancer!r}: choose one with the config group, e.g. "
            f"balancer=famo (one of {', '.join(BALANCERS)}), not model.balancer=...",
        )


def check_optimizer(factory: Callable[..., torch.optim.Optimizer]) -> None:
    """Build the optimizer once on a dummy parameter, so its own checks run now; the lr must be > 0."""
    keywords = getattr(factory, "keywords", None) or {}
    if "lr" in keywords:
        real(keywords["lr"], "optimizer.lr", minimum=0.0, exclusive=True)
    try:
        built = factory(params=[nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as error:
        raise OptionError("optimizer", f"is not accepted by the optimizer: {error}") from None
    for group in built.param_groups:
        lr = group["lr"]
        real(float(lr) if isinstance(lr, Tensor) else lr, "optimizer.lr", minimum=0.0, exclusive=True)


def check_scheduler(scheduler: Mapping[str, Any]) -> dict[str, Any]:
    """The options of :func:`warmup_poly_schedule`: ``warmup_steps`` an integer >= 0, ``power`` >= 0."""
    unknown = sorted(set(scheduler) - {"warmup_steps", "power"})
    if unknown:
        raise OptionError(f"scheduler.{unknown[0]}", "is not an option; the options are warmup_steps, power")
    checked = dict(scheduler)
    if "warmup_steps" in checked:
        integer(checked["warmup_steps"], "scheduler.warmup_steps", minimum=0)
    if "power" in checked:
        real(checked["power"], "scheduler.power", minimum=0.0)
    return checked


def check_finite(
    loss: Tensor, terms: Mapping[str, Tensor], step: int, strategy: Strategy | None = None
) -> None:
    """Stop training at the first non-finite loss: a FloatingPointError naming the step and the terms.

    Args:
        loss: the total (eq. 14).
        terms: the terms of :class:`tiger.training.losses.TigerLoss` it was formed from.
        step: the global step, for the message.
        strategy: the trainer's strategy; with several processes all of them stop together.
    """
    finite = bool(torch.isfinite(loss))
    if strategy is not None and strategy.world_size > 1:
        finite = strategy.reduce_boolean_decision(finite, all=True)
    if finite:
        return
    bad = [(name, value.item()) for name, value in terms.items() if not torch.isfinite(value)]
    if not bad and not torch.isfinite(loss):
        bad = [("loss", loss.item())]
    listing = ", ".join(f"'{name}' is {value}" for name, value in bad)
    what = (
        f"train loss term{'s' if len(bad) > 1 else ''} {listing}"
        if bad
        else "the loss of another process is not finite"
    )
    raise FloatingPointError(
        f"step {step}: {what}; stopping at the first non-finite loss (check the learning rate, "
        "the loss settings model.loss.* and the data of this batch)"
    )
