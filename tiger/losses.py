"""Per-pixel task losses (PROTOCOL.md section 3), the counterfactual objective (eq. 8-13) and the total
loss (eq. 14)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from tiger import options
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


def counterfactual_delta(
    tasks: Sequence[Task],
    counterfactual: Mapping[str, Tensor],
    targets: Mapping[str, Tensor],
    full_losses: Mapping[str, tuple[Tensor, Tensor]],
    grid: tuple[int, int],
) -> tuple[Tensor, Tensor]:
    """Delta_{k,n}(t): the loss increase when expert k is removed, pooled to the token grid (eq. 8).

    Args:
        tasks: the T tasks to measure (any subset of the model's, in the order wanted).
        counterfactual: {task: logits (B, M, C, H0, W0)} of :meth:`tiger.model.TIGER.counterfactual`.
        targets: {task: target (B, ...)} at (H0, W0).
        full_losses: {task: :func:`pixel_loss` of the full model's prediction}.
        grid: the token grid (H, W).

    Returns:
        delta: (B, T, M, N), pooled over the valid pixels of each token cell.
        valid: (B, T, N) tokens whose cell holds a valid pixel of the task's target.
    """
    deltas, valids = [], []
    for task in tasks:
        logits = counterfactual[task.name]
        experts = logits.shape[1]
        target = targets[task.name]
        repeated = target.repeat_interleave(experts, dim=0)  # rows (b m), like the flattened logits
        removed_loss, _ = pixel_loss(task, logits.flatten(0, 1), repeated)
        full, weight = full_losses[task.name]
        delta = rearrange(removed_loss, "(b m) h w -> b m h w", m=experts) - full[:, None]  # eq. 8
        pooled, valid = pool_to_grid(delta * weight[:, None], weight[:, None].expand_as(delta), grid)
        deltas.append(pooled.flatten(2))
        valids.append(valid[:, 0].flatten(1))
    return torch.stack(deltas, 1), torch.stack(valids, 1)


def counterfactual_loss(
    delta: Tensor, valid: Tensor, alpha: Tensor, tau: float = 1.0, eps: float = 1e-6
) -> Tensor:
    """L_cf: mean over valid tokens of JSD(p || alpha), p = causal importance of ``delta`` (eq. 9-13).

    delta, alpha: (B, T, M, N); valid: (B, T, N). p is a fixed target (no gradient flows through it).
    """
    p = causal_importance(delta.detach(), tau, eps, dim=2)  # eq. 9-10
    per_token = jensen_shannon(p, alpha, dim=2)  # eq. 11-12, q = alpha
    return (per_token * valid).sum() / valid.sum().clamp_min(1)  # eq. 13


class TigerLoss(nn.Module):
    """The training objective: sum_j lambda_j L_task^(j) + lambda_cf L_cf (eq. 14).

    It never calls the model: it receives the predictions, the routing weights and, for L_cf, the
    counterfactual predictions of :meth:`tiger.model.TIGER.counterfactual`.

    Args:
        tasks: the tasks, each carrying its lambda_j as ``weight``.
        lambda_cf: weight of the counterfactual loss, >= 0; 0 disables it (and its extra passes).
        tau: temperature of the causal importance distribution (eq. 10), > 0.
        eps: the epsilon of eq. 9, > 0.
    """

    def __init__(
        self, tasks: Sequence[Task], lambda_cf: float = 0.1, tau: float = 1.0, eps: float = 1e-6
    ) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.lambda_cf = options.real(lambda_cf, "lambda_cf", minimum=0.0)
        self.tau = options.real(tau, "tau", minimum=0.0, exclusive=True)
        self.eps = options.real(eps, "eps", minimum=0.0, exclusive=True)

    def uses_counterfactual(self, num_experts: int) -> bool:
        """Whether :meth:`forward` needs counterfactual predictions (lambda_cf > 0 and M > 1)."""
        return self.lambda_cf > 0 and num_experts > 1

    def forward(
        self, output, targets: Mapping[str, Tensor], counterfactual: Mapping[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        """Total loss and its terms.

        Args:
            output: the :class:`tiger.model.TigerOutput` of the batch (predictions, alpha, grid).
            targets: {task: target}.
            counterfactual: {task: (B, M, C, H0, W0)} from :meth:`tiger.model.TIGER.counterfactual`;
                required when :meth:`uses_counterfactual`.

        Returns:
            {"loss": total, "<task>": L_task, "cf": L_cf (when used)}.
        """
        if output.alpha.shape[1] != len(self.tasks):
            raise ValueError(
                f"the loss has {len(self.tasks)} tasks but the routing weights cover "
                f"{output.alpha.shape[1]}: build TigerLoss with the model's tasks"
            )
        pixels = self.pixel_losses(output, targets)
        terms = {name: weighted_mean(loss, weight) for name, (loss, weight) in pixels.items()}
        total = sum(task.weight * terms[task.name] for task in self.tasks)  # eq. 14, task part
        if self.uses_counterfactual(output.alpha.shape[2]):
            if counterfactual is None:
                raise ValueError("lambda_cf > 0: pass the counterfactual predictions (TIGER.counterfactual)")
            delta, valid = counterfactual_delta(self.tasks, counterfactual, targets, pixels, output.grid)
            terms["cf"] = counterfactual_loss(delta, valid, output.alpha, self.tau, self.eps)
            total = total + self.lambda_cf * terms["cf"]  # eq. 14
        terms["loss"] = total
        return terms

    def pixel_losses(self, output, targets: Mapping[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
        """{task: :func:`pixel_loss` of the full model's prediction}."""
        return {
            task.name: pixel_loss(task, output.predictions[task.name], targets[task.name])
            for task in self.tasks
        }
