"""The LightningModule that trains TIGER with the loss of eq. 14 and the protocol metrics."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import Strategy
from torch import Tensor, nn

from tiger import checkpoint
from tiger.analysis import RoutingStatistics, counterfactual_importance
from tiger.balancing import FixedWeights, TaskBalancer
from tiger.build import build_tiger, plain_config
from tiger.losses import TigerLoss, task_loss
from tiger.metrics import build_metric
from tiger.model import REMOVALS
from tiger.options import OptionError, choice, integer, option_prefix, real
from tiger.tasks import Task, metric_target


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
        net: keyword arguments of :func:`tiger.build.build_tiger` (kept verbatim in every checkpoint, so
            the model can be rebuilt from it).
        loss: keyword arguments of :class:`tiger.losses.TigerLoss` (lambda_cf, tau, eps) and ``removal``, how
            :meth:`tiger.model.TIGER.counterfactual` removes an expert (subtract, renormalize, mean).
        optimizer: a partial optimizer taking ``params``; its ``lr`` must be > 0.
        scheduler: ``{"warmup_steps": int >= 0, "power": float >= 0}`` for :func:`warmup_poly_schedule`,
            or None.
        dataset: ``nyud``, ``pascal`` or ``synthetic``: picks the metric options.
        routing_analysis: removal modes whose counterfactual importance is compared with the routing at
            every validation (:class:`tiger.analysis.RoutingStatistics`; costs M decoder passes per mode and
            batch); the expert usage is always measured.
        balancer: a partial :class:`tiger.balancing.TaskBalancer` taking the tasks (``conf/balancer/``);
            None: :class:`tiger.balancing.FixedWeights`, the lambda_j of eq. 14.

    Every option is checked here; an :class:`tiger.options.OptionError` names it (``net.grid``,
    ``loss.tau``, ``optimizer.lr``, ``scheduler.power``). Training stops at the first non-finite loss,
    naming the step and the term (:func:`check_finite`).
    """

    def __init__(
        self,
        net: Mapping[str, Any],
        loss: Mapping[str, Any],
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Mapping[str, Any] | None,
        dataset: str,
        routing_analysis: Sequence[str] = (),
        balancer: Callable[[list[Task]], TaskBalancer] | None = None,
    ) -> None:
        super().__init__()
        self.net_config = plain_config(net)
        self.loss_options = plain_config(loss)
        self.scheduler_options = check_scheduler(plain_config(scheduler)) if scheduler else None
        check_optimizer(optimizer)
        options = dict(self.loss_options)
        self.removal = choice(options.pop("removal", "subtract"), "loss.removal", REMOVALS)
        with option_prefix("net"):
            self.net = build_tiger(**self.net_config)
        with option_prefix("loss"):
            self.criterion = TigerLoss(self.net.tasks, **options)
        self.balancer = (balancer or FixedWeights)(self.net.tasks)
        self._balanced_at_step = -1
        self.optimizer_factory = optimizer
        self.dataset = dataset
        self.val_metrics = nn.ModuleDict({task.name: build_metric(task, dataset) for task in self.net.tasks})
        self.last_val_results: dict[str, dict[str, float]] = {}
        unknown = sorted(set(routing_analysis) - set(REMOVALS))
        if unknown:
            raise ValueError(
                f"model.routing_analysis: unknown removal modes {unknown}; known: {list(REMOVALS)}"
            )
        self.routing_stats = RoutingStatistics(
            self.net.task_names, self.net.expert_names, list(routing_analysis)
        )
        self.last_routing: dict[str, Any] = {}
        self.routing_history: list[dict[str, Any]] = []  # {"step", "usage"} of training batches

    def forward(self, images: Tensor):
        return self.net(images)

    def _targets(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        missing = [name for name in self.net.task_names if name not in batch]
        if missing:
            raise KeyError(f"the batch has no target for tasks {missing}; it has keys {sorted(batch)}")
        return {name: batch[name] for name in self.net.task_names}

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        output = self.net(batch["image"])
        if self.global_step % self.trainer.log_every_n_steps == 0:
            self.record_routing(output.alpha)
        counterfactual = None
        if self.criterion.uses_counterfactual(len(self.net.experts)):
            counterfactual = self.net.counterfactual(output, self.removal, self.criterion.eps)
        terms = self.criterion(output, self._targets(batch), counterfactual)
        terms["loss"] = self.balanced_loss(terms, output.fused)
        self._balanced_at_step = self.global_step
        check_finite(terms, self.global_step, self._trainer and self._trainer.strategy)
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items() if k != "loss"}, on_step=True)
        self.log("train/loss", terms["loss"].detach(), prog_bar=True, on_step=True)
        weights = zip(self.balancer.task_names, self.balancer.weights(), strict=True)
        self.log_dict({f"train/weight/{name}": value for name, value in weights}, on_step=True)
        return terms["loss"]

    def balanced_loss(self, terms: Mapping[str, Tensor], fused: Tensor) -> Tensor:
        """Eq. 14 with the balancer's task weights: sum_j w_j L_task^(j) + lambda_cf L_cf.

        ``terms`` are the :class:`TigerLoss` terms; ``fused`` the routed task tokens (B, T, N, d) (GradNorm).
        """
        total = self.balancer({name: terms[name] for name in self.net.task_names}, fused)
        if "cf" in terms:
            total = total + self.criterion.lambda_cf * terms["cf"]  # L_cf keeps its own lambda_cf
        return total

    def on_train_batch_end(self, outputs: Any, batch: Mapping[str, Any], batch_idx: int) -> None:
        """FAMO: after each optimizer step, the task losses of the same batch at the new parameters."""
        if not self.balancer.needs_losses_after_step or self.trainer.global_step <= self._balanced_at_step:
            return  # no balancer that asks for it, or no optimizer step (gradient accumulation)
        with torch.no_grad(), self.trainer.precision_plugin.forward_context():
            output = self.net(batch["image"])
            targets = self._targets(batch)
            losses = {
                task.name: task_loss(task, output.predictions[task.name], targets[task.name])
                for task in self.net.tasks
            }
        self.balancer.after_step(losses)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        output = self.net(batch["image"])
        targets = self._targets(batch)
        loss = sum(
            task.weight * task_loss(task, output.predictions[task.name], targets[task.name])
            for task in self.net.tasks
        )
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch["image"].shape[0])
        for task in self.net.tasks:
            self.val_metrics[task.name].update(
                task.postprocess(output.predictions[task.name]), metric_target(task.name, batch)
            )
        importance = {}
        for removal in self.routing_stats.removals:
            tasks, p, valid = counterfactual_importance(self.net, output, targets, removal)  # tau = 1
            importance[removal] = ([task.name for task in tasks], p, valid)
        self.routing_stats.update(output.alpha, importance)

    def on_validation_epoch_end(self) -> None:
        results: dict[str, dict[str, float]] = {}
        for name, metric in self.val_metrics.items():
            values = metric.compute()
            results[name] = {key: float(value) for key, value in values.items()}
            metric.reset()
            self.log_dict(
                {f"val/{name}/{key}": float(value) for key, value in values.items()}, sync_dist=False
            )
        self.last_val_results = results
        routing = self.routing_stats.compute()
        self.routing_stats.reset()
        self.last_routing = routing
        logged = {
            f"val/usage/{task}/{expert}": weight
            for task, row in routing["usage"].items()
            for expert, weight in row.items()
        }
        for removal, rows in routing["faithfulness"].items():
            for task, row in rows.items():
                logged[f"val/faithfulness/{removal}/{task}/spearman"] = row["spearman"]
                logged[f"val/faithfulness/{removal}/{task}/top1"] = row["top1"]
        self.log_dict(logged, sync_dist=False)

    def record_routing(self, alpha: Tensor) -> None:
        """Keep the mean routing weight per task and expert of a training batch in :attr:`routing_history`
        (every ``trainer.log_every_n_steps`` steps: the routing mass over training, at no extra cost)."""
        mean = alpha.detach().float().mean((0, 3)).cpu()
        usage = {
            task: {expert: float(mean[t, k]) for k, expert in enumerate(self.net.expert_names)}
            for t, task in enumerate(self.net.task_names)
        }
        self.routing_history.append({"step": int(self.global_step), "usage": usage})

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

    # checkpoints: only what was trained, plus what is needed to rebuild the frozen parts (tiger.checkpoint)
    def checkpoint_identity(self) -> dict[str, Any]:
        return checkpoint.tiger_section(self.net, self.net_config, self.loss_options, self.dataset)

    def on_save_checkpoint(self, saved: dict[str, Any]) -> None:
        saved["state_dict"] = checkpoint.trainable_state(saved["state_dict"])
        saved[checkpoint.SECTION] = self.checkpoint_identity()

    def on_load_checkpoint(self, saved: dict[str, Any]) -> None:
        source = getattr(self._trainer, "ckpt_path", None) or ""  # the file, when Lightning reads one
        checkpoint.check_fits(saved, self.checkpoint_identity(), source)
        checkpoint.load_trainable(self.net, saved["state_dict"], source)  # names any key or shape difference
        saved["state_dict"].update(checkpoint.frozen_state(self.net))  # for Lightning's own strict load


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


def check_finite(terms: Mapping[str, Tensor], step: int, strategy: Strategy | None = None) -> None:
    """Stop training at the first non-finite loss: a FloatingPointError naming the step and the terms.

    Args:
        terms: the loss terms of :class:`tiger.losses.TigerLoss` (``loss`` is their weighted sum).
        step: the global step, for the message.
        strategy: the trainer's strategy; with several processes all of them stop together.
    """
    finite = bool(torch.isfinite(terms["loss"]))
    if strategy is not None and strategy.world_size > 1:
        finite = strategy.reduce_boolean_decision(finite, all=True)
    if finite:
        return
    bad = [
        (name, value.item()) for name, value in terms.items() if name != "loss" and not torch.isfinite(value)
    ]
    if not bad and not torch.isfinite(terms["loss"]):
        bad = [("loss", terms["loss"].item())]
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
