"""Per-pixel task losses (PROTOCOL.md section 3), the counterfactual objective (eq. 8-13) and the total
loss (eq. 14)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from tiger.tasks import Task


def pixel_loss(task: Task, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """The reference per-pixel loss of a task: its entry's :meth:`tiger.tasks.Task.pixel_loss`.

    Args:
        task: the task.
        logits: its head output (B, C, H, W).
        target: its target in the format of :mod:`tiger.tasks`.

    Returns:
        loss: (B, H, W), per-pixel loss (zero on ignored pixels).
        weight: (B, H, W), zero on ignored pixels; the task loss is ``sum(loss * weight) / sum(weight)``.
    """
    return task.pixel_loss(logits, target)


def weighted_mean(loss: Tensor, weight: Tensor) -> Tensor:
    """The scalar task loss from :func:`pixel_loss` output: ``sum(loss * weight) / sum(weight)``."""
    return (loss * weight).sum() / weight.sum().clamp_min(1e-6)


def task_loss(task: Task, logits: Tensor, target: Tensor) -> Tensor:
    """The scalar task loss L_task^(j): the weighted mean of :func:`pixel_loss` over valid pixels."""
    return weighted_mean(*pixel_loss(task, logits, target))


def jensen_shannon(p: Tensor, q: Tensor, dim: int) -> Tensor:
    """JSD(p || q) = (KL(p || m) + KL(q || m)) / 2 with m = (p + q) / 2, reduced over ``dim`` (eq. 12).

    Gradient-safe where q is exactly 0 (a saturated softmax): the logarithms see q and m clamped to a
    tiny positive value, which changes no value, since those terms are multiplied by q = 0.
    """
    tiny = torch.finfo(q.dtype).tiny
    m = 0.5 * (p + q)
    log_m = m.clamp_min(tiny).log()
    kl_pm = (torch.xlogy(p, p) - p * log_m).sum(dim)
    kl_qm = (q * (q.clamp_min(tiny).log() - log_m)).sum(dim)
    return 0.5 * (kl_pm + kl_qm)


def causal_importance(delta: Tensor, tau: float, eps: float = 1e-6, dim: int = 2) -> Tensor:
    """Counterfactual loss increases -> importance distribution p over experts (eq. 9-10).

    delta: Delta_{k,n} with the experts along ``dim``; returns p of the same shape, summing to one there.
    """
    mean = delta.mean(dim, keepdim=True)
    std = delta.std(dim, keepdim=True, unbiased=False)
    standardised = (delta - mean) / (std + eps)  # eq. 9
    return (standardised / tau).softmax(dim)  # eq. 10


def pool_to_grid(values: Tensor, weight: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Average per-pixel ``values`` (..., H0, W0) over the valid pixels (``weight > 0``) of each token cell.

    Returns the pooled values (..., H, W) and a boolean mask of the cells that hold any valid pixel.
    """
    valid = (weight > 0).to(values.dtype)
    lead = values.shape[:-2]
    numerator = F.adaptive_avg_pool2d((values * valid).flatten(0, -3)[:, None], grid)
    denominator = F.adaptive_avg_pool2d(valid.flatten(0, -3)[:, None], grid)
    pooled = numerator / denominator.clamp_min(1e-12)
    return pooled.reshape(*lead, *grid), (denominator > 0).reshape(*lead, *grid)


class TigerLoss(nn.Module):
    """The training objective: sum_j lambda_j L_task^(j) + lambda_cf L_cf (eq. 14).

    Args:
        tasks: the tasks, each carrying its lambda_j as ``weight``.
        lambda_cf: weight of the counterfactual loss; 0 disables it (and its extra passes).
        tau: temperature of the causal importance distribution (eq. 10).
        eps: the epsilon of eq. 9.
        removal: how expert k is removed in the counterfactual pass: ``subtract`` its routed
            contribution alpha_k F'_k from f (the weights of the others unchanged), or ``renormalize``
            the remaining weights to sum to one.
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        lambda_cf: float = 0.1,
        tau: float = 1.0,
        eps: float = 1e-6,
        removal: Literal["subtract", "renormalize"] = "subtract",
    ) -> None:
        super().__init__()
        if removal not in ("subtract", "renormalize"):
            raise ValueError(f"removal must be 'subtract' or 'renormalize', got {removal!r}")
        self.tasks = list(tasks)
        self.lambda_cf, self.tau, self.eps, self.removal = lambda_cf, tau, eps, removal

    def forward(self, model: nn.Module, output, targets: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Total loss and its terms.

        Args:
            model: the :class:`tiger.model.TIGER` that produced ``output`` (its ``decode`` is re-run).
            output: the :class:`tiger.model.TigerOutput` of the batch.
            targets: {task: target}.

        Returns:
            {"loss": total, "<task>": L_task, "cf": L_cf (when lambda_cf > 0)}.
        """
        pixels = self.pixel_losses(output, targets)
        terms = {name: weighted_mean(loss, weight) for name, (loss, weight) in pixels.items()}
        total = sum(task.weight * terms[task.name] for task in self.tasks)  # eq. 14, task part
        if self.lambda_cf > 0 and output.alpha.shape[2] > 1:
            terms["cf"] = self.counterfactual(model, output, targets, pixels)
            total = total + self.lambda_cf * terms["cf"]  # eq. 14
        terms["loss"] = total
        return terms

    def pixel_losses(self, output, targets: Mapping[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
        """{task: :func:`pixel_loss` of the full model's prediction}."""
        return {
            task.name: pixel_loss(task, output.predictions[task.name], targets[task.name])
            for task in self.tasks
        }

    @torch.no_grad()
    def counterfactual_delta(
        self,
        model: nn.Module,
        output,
        targets: Mapping[str, Tensor],
        full_losses: Mapping[str, tuple[Tensor, Tensor]] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Delta_{k,n}(t) for every expert, task and token, from one batched pass without autograd (eq. 8).

        Args:
            full_losses: :meth:`pixel_losses` of ``output`` when the caller has them (computed otherwise).

        Returns:
            delta: (B, T, M, N) loss increase when expert k's routed contribution is removed, pooled to the
                token grid over valid pixels.
            valid: (B, T, N) tokens whose cell holds a valid pixel of the task's target.
        """
        state = output.state
        if state.alpha.shape[1] != len(self.tasks):
            raise ValueError(
                f"the loss has {len(self.tasks)} tasks but the routing weights cover {state.alpha.shape[1]}: "
                "build TigerLoss with the model's tasks"
            )
        experts = state.alpha.shape[2]
        alpha = state.alpha.unsqueeze(-1)  # (B, T, M, N, 1)
        removed = state.fused[:, :, None] - alpha * state.tokens[:, None]  # f - alpha_k F'_k
        if self.removal == "renormalize":
            removed = removed / (1.0 - alpha).clamp_min(self.eps)
        removed = rearrange(removed, "b t m n d -> (m b) t n d")
        size = next(iter(output.predictions.values())).shape[-2:]
        counterfactual = model.decode(removed, state.grid, size)
        full_losses = full_losses or self.pixel_losses(output, targets)
        deltas, valids = [], []
        for task in self.tasks:
            target = targets[task.name]
            full, weight = full_losses[task.name]
            repeated = target.repeat(experts, *([1] * (target.ndim - 1)))
            removed_loss, _ = pixel_loss(task, counterfactual[task.name], repeated)
            delta = rearrange(removed_loss, "(m b) h w -> b m h w", m=experts) - full[:, None]  # eq. 8
            pooled, valid = pool_to_grid(
                delta * weight[:, None], weight[:, None].expand_as(delta), state.grid
            )
            deltas.append(pooled.flatten(2))
            valids.append(valid[:, 0].flatten(1))
        return torch.stack(deltas, 1), torch.stack(valids, 1)

    def counterfactual(
        self,
        model: nn.Module,
        output,
        targets: Mapping[str, Tensor],
        full_losses: Mapping[str, tuple[Tensor, Tensor]] | None = None,
    ) -> Tensor:
        """L_cf: JSD between the causal importance p (a fixed target) and the routing alpha (eq. 8-13)."""
        delta, valid = self.counterfactual_delta(model, output, targets, full_losses)
        p = causal_importance(delta, self.tau, self.eps, dim=2)  # eq. 9-10, no gradient
        per_token = jensen_shannon(p, output.alpha, dim=2)  # eq. 11-12, q = alpha
        return (per_token * valid).sum() / valid.sum().clamp_min(1)  # eq. 13
