"""The LightningModule that trains TIGER with the loss of eq. 14 and the protocol metrics."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn

from tiger import checkpoint
from tiger.analysis import RoutingStatistics, counterfactual_importance
from tiger.build import build_tiger, plain_config
from tiger.losses import TigerLoss, task_loss
from tiger.metrics import build_metric
from tiger.model import REMOVALS


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
        optimizer: a partial optimizer taking ``params``.
        scheduler: ``{"warmup_steps": int, "power": float}`` for :func:`warmup_poly_schedule`, or None.
        dataset: ``nyud``, ``pascal`` or ``synthetic``: picks the metric options.
        routing_analysis: removal modes whose counterfactual importance is compared with the routing at
            every validation (:class:`tiger.analysis.RoutingStatistics`; costs M decoder passes per mode and
            batch); the expert usage is always measured.
    """

    def __init__(
        self,
        net: Mapping[str, Any],
        loss: Mapping[str, Any],
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Mapping[str, Any] | None,
        dataset: str,
        routing_analysis: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.net_config = plain_config(net)
        self.net = build_tiger(**self.net_config)
        self.loss_options = plain_config(loss)
        options = dict(self.loss_options)
        self.removal = options.pop("removal", "subtract")
        if self.removal not in REMOVALS:
            raise ValueError(f"model.loss.removal must be one of {REMOVALS}, got {self.removal!r}")
        self.criterion = TigerLoss(self.net.tasks, **options)
        self.optimizer_factory = optimizer
        self.scheduler_options = dict(scheduler) if scheduler else None
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
        self.routing_history: list[dict[str, Any]] = []  # {"step", "usage"} at every validation of a fit

    def forward(self, images: Tensor):
        return self.net(images)

    def _targets(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        missing = [name for name in self.net.task_names if name not in batch]
        if missing:
            raise KeyError(f"the batch has no target for tasks {missing}; it has keys {sorted(batch)}")
        return {name: batch[name] for name in self.net.task_names}

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        output = self.net(batch["image"])
        counterfactual = None
        if self.criterion.uses_counterfactual(len(self.net.experts)):
            counterfactual = self.net.counterfactual(output, self.removal, self.criterion.eps)
        terms = self.criterion(output, self._targets(batch), counterfactual)
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items() if k != "loss"}, on_step=True)
        self.log("train/loss", terms["loss"].detach(), prog_bar=True, on_step=True)
        return terms["loss"]

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
                task.postprocess(output.predictions[task.name]), targets[task.name]
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
        if self.trainer.state.fn == TrainerFn.FITTING and not self.trainer.sanity_checking:
            self.routing_history.append({"step": int(self.global_step), "usage": routing["usage"]})

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
