"""The training objective's terms: the task losses (PROTOCOL.md section 3, each task entry's
:meth:`~tiger.tasks.Task.pixel_loss`) and the counterfactual objective L_cf (eq. 8-13) with its importance
targets. Their weighted total (eq. 14) is formed by the balancer (:mod:`tiger.training.balancing`).

Importance targets p (``model.loss.target``; the JSD of eq. 11-13 is the same for all):

============  ======================================================================================
``zscore``    eq. 9-10, the paper's (default): p = softmax_k(z_k / tau), z the z-score of Delta over
              the M experts of a token. A z-score over M items is at most sqrt(M - 1) (Samuelson's
              inequality), so at tau = 1 an expert without any effect keeps at least ~6-10% of p
              (M = 5..3), however large the others' effects.
``positive``  p_k = [Delta_k]+ / sum_j [Delta_j]+: the relative positive part, the normalisation of
              Ablation-CAM (Desai and Ramaswamy, WACV 2020). An expert whose removal does not raise the
              loss gets exactly 0; p does not change when a task's loss is rescaled. Fails where every
              expert is redundant with another (leave-one-out gives each 0: no target).
``sparsemax`` p = sparsemax(Delta / (tau s)), s the token's full loss (Martins and Astudillo, ICML 2016):
              exact zeros below a data-dependent threshold, and a temperature in units of the token's
              loss, so it means the same for every task. Keeps the paper's shift invariance; like the
              z-score it can still give mass to a null expert when the others' effects are small
              against tau s.
============  ======================================================================================

For ``positive`` and ``sparsemax`` a token carries a target only when its experts' total positive effect
sum_k [Delta_k]+ exceeds ``min_effect`` times its full loss s (no evidence, no pull): other tokens are
left out of eq. 13's mean, like tokens without a valid pixel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from entmax import sparsemax
from torch import Tensor, nn

from tiger import options
from tiger.model.tiger import REMOVALS, TigerOutput
from tiger.tasks import Task

TARGETS = ("zscore", "positive", "sparsemax")


@dataclass(frozen=True)
class LossConfig:
    """The counterfactual objective's options (``model.loss``), checked when constructed.

    Attributes:
        lambda_cf: weight of L_cf in eq. 14 (used by the balancer), >= 0; 0 disables L_cf and its passes.
        tau: temperature of the importance target (eq. 10; ``sparsemax``: in units of the token's loss), > 0.
        eps: the epsilon of eq. 9 (and the floor of ``renormalize``'s 1 - alpha_k), > 0.
        removal: how eq. 8 removes an expert (:func:`tiger.model.tiger.remove_expert`).
        target: the importance target p built from Delta (see the module docstring).
        min_effect: ``positive`` / ``sparsemax``: the least total positive effect, as a fraction of the
            token's full loss, for a token to carry a target, >= 0.
    """

    lambda_cf: float = 0.1
    tau: float = 1.0
    eps: float = 1e-6
    removal: str = "subtract"
    target: str = "zscore"
    min_effect: float = 0.01

    def __post_init__(self) -> None:
        options.real(self.lambda_cf, "lambda_cf", minimum=0.0)
        options.real(self.tau, "tau", minimum=0.0, exclusive=True)
        options.real(self.eps, "eps", minimum=0.0, exclusive=True)
        options.choice(self.removal, "removal", REMOVALS)
        options.choice(self.target, "target", TARGETS)
        options.real(self.min_effect, "min_effect", minimum=0.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def weighted_mean(loss: Tensor, weight: Tensor) -> Tensor:
    """The scalar task loss from a task's per-pixel loss and weight: ``sum(loss * weight) / sum(weight)``."""
    return (loss * weight).sum() / weight.sum().clamp_min(1e-6)


def task_loss(task: Task, logits: Tensor, target: Tensor) -> Tensor:
    """The scalar task loss L_task^(j): the weighted mean of the task's per-pixel loss over valid pixels."""
    return weighted_mean(*task.pixel_loss(logits, target))


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
    """The paper's importance target (eq. 9-10): p = softmax(standardised Delta / tau) over ``dim``.

    delta: Delta_{k,n} with the experts along ``dim``; returns p of the same shape, summing to one there.
    """
    mean = delta.mean(dim, keepdim=True)
    std = delta.std(dim, keepdim=True, unbiased=False)
    standardised = (delta - mean) / (std + eps)  # eq. 9
    return (standardised / tau).softmax(dim)  # eq. 10


class Effects(NamedTuple):
    """The counterfactual effects of removing each expert, pooled to the token grid (eq. 8).

    Attributes:
        delta: Delta_{k,n}(t) = L^(-k) - L, (B, T, M, N).
        loss: the full model's loss s per token, (B, T, N).
        valid: (B, T, N) tokens whose cell holds a valid pixel of the task's target.
    """

    delta: Tensor
    loss: Tensor
    valid: Tensor


def importance_target(
    effects: Effects, target: str = "zscore", tau: float = 1.0, eps: float = 1e-6, min_effect: float = 0.01
) -> tuple[Tensor, Tensor]:
    """The importance distribution p over experts built from Delta (see the module docstring).

    Returns:
        p: (B, T, M, N), summing to one over the experts (dim 2) where it is a target.
        has_target: (B, T, N) tokens that carry a target: valid, and for ``positive`` / ``sparsemax`` with
            a total positive effect above ``min_effect`` times the token's loss.
    """
    delta = effects.delta
    if target == "zscore":
        return causal_importance(delta, tau, eps, dim=2), effects.valid
    gain = delta.clamp_min(0.0)
    total = gain.sum(2)  # (B, T, N)
    evident = effects.valid & (total > 0) & (total > min_effect * effects.loss)
    if target == "positive":
        return gain / total.clamp_min(torch.finfo(total.dtype).tiny)[:, :, None], evident
    if target == "sparsemax":
        scale = tau * effects.loss.clamp_min(eps)[:, :, None]  # (B, T, 1, N)
        return sparsemax(delta / scale, dim=2), evident
    raise ValueError(f"target must be one of {TARGETS}, got {target!r}")


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


def counterfactual_effects(
    tasks: Sequence[Task],
    counterfactual: Mapping[str, Tensor],
    targets: Mapping[str, Tensor],
    full_losses: Mapping[str, tuple[Tensor, Tensor]],
    grid: tuple[int, int],
) -> Effects:
    """Delta_{k,n}(t): the loss increase when expert k is removed, pooled to the token grid (eq. 8).

    Args:
        tasks: the T tasks to measure (any subset of the model's, in the order wanted).
        counterfactual: {task: logits (B, M, C, H0, W0)} of :meth:`tiger.model.TIGER.counterfactual` (any
            stack of M alternative predictions, e.g. expert subsets).
        targets: {task: target (B, ...)} at (H0, W0).
        full_losses: {task: the task's per-pixel (loss, weight) of the full model's prediction}.
        grid: the token grid (H, W).
    """
    deltas, losses, valids = [], [], []
    for task in tasks:
        logits = counterfactual[task.name]
        experts = logits.shape[1]
        repeated = targets[task.name].repeat_interleave(experts, dim=0)  # rows (b m), like the logits
        removed_loss, _ = task.pixel_loss(logits.flatten(0, 1), repeated)
        full, weight = full_losses[task.name]
        delta = rearrange(removed_loss, "(b m) h w -> b m h w", m=experts) - full[:, None]  # eq. 8
        pooled, valid = pool_to_grid(delta * weight[:, None], weight[:, None].expand_as(delta), grid)
        pooled_loss, _ = pool_to_grid(full * weight, weight, grid)
        deltas.append(pooled.flatten(2))
        losses.append(pooled_loss.flatten(1))
        valids.append(valid[:, 0].flatten(1))
    return Effects(torch.stack(deltas, 1), torch.stack(losses, 1), torch.stack(valids, 1))


def counterfactual_loss(p: Tensor, has_target: Tensor, alpha: Tensor) -> Tensor:
    """L_cf: the mean over the tokens with a target of JSD(p || alpha) (eq. 11-13).

    p, alpha: (B, T, M, N); has_target: (B, T, N). p is a fixed target (no gradient flows through it).
    """
    per_token = jensen_shannon(p.detach(), alpha, dim=2)  # eq. 11-12, q = alpha
    return (per_token * has_target).sum() / has_target.sum().clamp_min(1)  # eq. 13


class TigerLoss(nn.Module):
    """The terms of the training objective: each task's loss L_task^(j) and L_cf (eq. 8-13).

    It never calls the model (it receives the predictions, the routing weights and, for L_cf, the
    counterfactual predictions of :meth:`tiger.model.TIGER.counterfactual`) and never weights the terms:
    the balancer forms eq. 14's total.

    Args:
        tasks: the model's tasks.
        config: the objective's options.
    """

    def __init__(self, tasks: Sequence[Task], config: LossConfig) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.config = config

    def uses_counterfactual(self, num_experts: int) -> bool:
        """Whether L_cf is part of the objective (lambda_cf > 0 and M > 1)."""
        return self.config.lambda_cf > 0 and num_experts > 1

    def forward(
        self,
        output: TigerOutput,
        targets: Mapping[str, Tensor],
        counterfactual: Mapping[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """The terms {"<task>": L_task, "cf": L_cf (with ``counterfactual``)}.

        Args:
            output: the forward pass of the batch (predictions, alpha, grid).
            targets: {task: target}.
            counterfactual: {task: (B, M, C, H0, W0)} from :meth:`tiger.model.TIGER.counterfactual`.
        """
        if output.alpha.shape[1] != len(self.tasks):
            raise ValueError(
                f"the loss has {len(self.tasks)} tasks but the routing weights cover "
                f"{output.alpha.shape[1]}: build TigerLoss with the model's tasks"
            )
        pixels = {
            task.name: task.pixel_loss(output.predictions[task.name], targets[task.name])
            for task in self.tasks
        }
        terms = {name: weighted_mean(loss, weight) for name, (loss, weight) in pixels.items()}
        if counterfactual is not None:
            fixed = {name: (loss.detach(), weight) for name, (loss, weight) in pixels.items()}
            effects = counterfactual_effects(self.tasks, counterfactual, targets, fixed, output.grid)
            config = self.config
            p, has_target = importance_target(
                effects, config.target, config.tau, config.eps, config.min_effect
            )
            terms["cf"] = counterfactual_loss(p, has_target, output.alpha)
        return terms
