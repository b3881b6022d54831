"""The callback that records routing over a run: what the end-of-run report, ``results.json`` and the logger
show about the router.

At every validation the routing figure of one validation image and the expert-usage table also go to the
run's loggers, through each logger's own API: TensorBoard (``add_image`` and ``add_text``) and Weights &
Biases (``log_image`` and ``log_table``). Other loggers (CSV) cannot hold a picture and get the scalars only;
the end-of-run report saves the last routing figure as ``routing.png`` in any case."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from torch import Tensor

from tiger.analysis.figures import MAX_SIDE, plot_routing, render_figure
from tiger.analysis.routing import (
    RoutingStatistics,
    counterfactual_importance,
    format_usage_table,
    mean_usage,
    shapley_credit,
)
from tiger.model.tiger import REMOVALS, TigerOutput
from tiger.options import choice, flag, integer

FIGURE_SIDE = 2 * MAX_SIDE
"""Pixels on the longer side of the routing figure sent to a logger (its labels stay legible)."""
ROUTING_FIGURE = "val/routing"
USAGE_TABLE = "val/usage_table"


class RoutingMonitor(Callback):
    """Routing over training and at every validation (:class:`tiger.analysis.routing.RoutingStatistics`).

    - Training: every ``every_n_steps`` optimizer steps (default ``trainer.log_every_n_steps``), the mean
      routing weight per task and expert of that training batch, kept in :attr:`history` (the routing mass
      over training, at no extra cost).
    - Validation: over every validation image, the mean routing weight; for each of ``removals``, the
      agreement of alpha with the counterfactual training target (``model.loss.target``, tau, min_effect);
      on the first ``shapley_images`` images (per process), faithfulness against exact Shapley credit
      (``model.loss.removal`` for absent experts). Logged as ``val/usage/<task>/<expert>``,
      ``val/target_agreement/<removal>/<task>/{spearman,top1}`` and ``val/shapley/<task>/{spearman,top1,
      useless_mass}``; the last validation's figures are :attr:`last`. With ``log_figures``, the routing
      figure of the first validation image (``val/routing``, at most :data:`FIGURE_SIDE` pixels a side) and
      the usage table (``val/usage_table``) go to each logger that holds pictures (TensorBoard, W&B), once
      per validation, from the main process.

    With one expert there is no routing to judge: only the usage is kept (and no figure is logged).

    Args:
        removals: removal modes whose counterfactual target is compared with alpha (each costs M decoder
            passes per validation batch).
        shapley_images: validation images per process on which Shapley credit is measured (2^M decoder
            passes each batch, M <= 6); 0 turns it off.
        shapley_permutations: sampled orderings when M > 6.
        every_n_steps: training steps between history entries (None: ``trainer.log_every_n_steps``).
        log_figures: send the routing figure and the usage table to the loggers at every validation.
    """

    def __init__(
        self,
        removals: Sequence[str] = (),
        shapley_images: int = 0,
        shapley_permutations: int = 64,
        every_n_steps: int | None = None,
        log_figures: bool = True,
    ) -> None:
        self.removals = [choice(removal, "removals", REMOVALS) for removal in removals]
        self.shapley_images = integer(shapley_images, "shapley_images", minimum=0)
        self.shapley_permutations = integer(shapley_permutations, "shapley_permutations", 1)
        if every_n_steps is not None:
            integer(every_n_steps, "every_n_steps", minimum=1)
        self.every_n_steps = every_n_steps
        self.log_figures = flag(log_figures, "log_figures")
        self.history: list[dict[str, Any]] = []
        self.last: dict[str, Any] = {}
        self._statistics: RoutingStatistics | None = None
        self._credited = 0
        self._example: tuple[Tensor, Tensor, tuple[int, int]] | None = None  # a validation image, alpha, grid

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step - 1  # the step whose batch this was (global_step counts it already)
        every = self.every_n_steps or trainer.log_every_n_steps
        recorded = self.history and self.history[-1]["step"] == step  # gradient accumulation
        if not isinstance(outputs, dict) or "alpha" not in outputs or step % every or recorded:
            return
        net = pl_module.net
        self.history.append(
            {"step": step, "usage": mean_usage(outputs["alpha"], net.task_names, net.expert_names)}
        )

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        net = pl_module.net
        routed = len(net.experts) > 1
        self._statistics = RoutingStatistics(
            net.task_names,
            net.expert_names,
            self.removals if routed else (),
            shapley=routed and self.shapley_images > 0,
        ).to(pl_module.device)
        self._credited = 0

    @torch.no_grad()
    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._statistics is None or not isinstance(outputs, TigerOutput):
            return
        if self._example is None:
            image, alpha = batch["image"][0].float().cpu(), outputs.alpha[0].float().cpu()
            self._example = (image, alpha, outputs.grid)
        net, config = pl_module.net, pl_module.loss_config
        targets = {name: batch[name] for name in net.task_names}
        importance = {
            removal: counterfactual_importance(net, outputs, targets, config, removal)
            for removal in self._statistics.removals
        }
        credit = None
        wanted = min(self.shapley_images - self._credited, outputs.alpha.shape[0])
        if self._statistics.shapley and wanted > 0:
            part = outputs.take(wanted)
            credit = shapley_credit(
                net,
                part,
                {name: target[:wanted] for name, target in targets.items()},
                config.removal,
                eps=config.eps,
                permutations=self.shapley_permutations,
                generator=torch.Generator().manual_seed(batch_idx),
            )
            self._credited += wanted
        self._statistics.update(outputs.alpha, importance, credit)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._statistics is None:
            return
        summary = self._statistics.compute()
        self._statistics = None
        self.last = summary
        logged = {
            f"val/usage/{task}/{expert}": weight
            for task, row in summary["usage"].items()
            for expert, weight in row.items()
        }
        for removal, rows in summary["target_agreement"].items():
            for task, row in rows.items():
                logged[f"val/target_agreement/{removal}/{task}/spearman"] = row["spearman"]
                logged[f"val/target_agreement/{removal}/{task}/top1"] = row["top1"]
        for task, row in summary.get("shapley", {}).items():
            for key in ("spearman", "top1", "useless_mass"):
                logged[f"val/shapley/{task}/{key}"] = row[key]
        pl_module.log_dict(logged)
        example, self._example = self._example, None
        routed = len(pl_module.net.expert_names) > 1
        if self.log_figures and routed and example is not None and trainer.is_global_zero:
            image, alpha, grid = example
            names = pl_module.net.task_names, pl_module.net.expert_names
            figure = render_figure(plot_routing(image, alpha, grid, *names), FIGURE_SIDE)
            for logger in trainer.loggers:
                log_routing(logger, figure, summary["usage"], trainer.global_step)


def log_routing(logger: Logger, figure: np.ndarray, usage: dict[str, dict[str, float]], step: int) -> None:
    """Send a routing figure (H, W, 3) uint8 and a usage table ({task: {expert: mean alpha}}) to ``logger``
    with its own API; a logger that holds no pictures (CSV) gets nothing."""
    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_image(ROUTING_FIGURE, figure, global_step=step, dataformats="HWC")
        table = "\n".join("    " + line for line in format_usage_table(usage).splitlines())  # preformatted
        logger.experiment.add_text(USAGE_TABLE, table, global_step=step)
    elif isinstance(logger, WandbLogger):
        logger.log_image(key=ROUTING_FIGURE, images=[figure], step=step)
        experts = list(next(iter(usage.values())))
        rows = [[task, *(100 * row[expert] for expert in experts)] for task, row in usage.items()]
        columns = ["task", *(f"{expert} %" for expert in experts)]
        logger.log_table(key=USAGE_TABLE, columns=columns, data=rows, step=step)
