"""Routing statistics: how the router spreads each task's tokens over the experts, how well that follows the
counterfactual target the training pulls it towards, and how well it follows each expert's exact Shapley
credit, a reference that no target trains on.

One implementation, :class:`RoutingStatistics`, serves inference
(:meth:`tiger.inference.Predictor.routing_report`), validation and the routing history of training
(:class:`tiger.analysis.callbacks.RoutingMonitor`). Everything
works for any expert set and task list: it reads the routing weights alpha (B, T, M, N) and the model's own
ablated forward passes (:meth:`tiger.model.TIGER.ablate`).

Shapley credit (Shapley 1953). For a task t and token n, the value of a set S of experts is the loss drop it
gives over no expert at all, v(S) = L_n(none) - L_n(S), where L_n(S) is the token's loss (pooled over its
valid pixels) when the experts outside S are removed with the configured removal
(:func:`tiger.model.tiger.remove_experts`). The credit of expert k is the mean over all orderings of its
marginal gain when it joins the experts before it:

    phi_k = sum_{S without k} |S|! (M - |S| - 1)! / M!  [L_n(S) - L_n(S + k)]

so an expert whose removal never changes anything gets exactly 0 (null player), two redundant experts share
their credit, and the credits sum to L_n(none) - L_n(all) (efficiency). Up to :data:`EXACT_UP_TO` experts all
2^M subsets are evaluated (one decoder pass each, batched, no autograd); above that the mean over sampled
orderings, with its standard error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from scipy.stats import rankdata
from torch import Tensor
from torchmetrics import Metric

from tiger.metrics.summary import text_table
from tiger.model.tiger import TIGER, TigerOutput
from tiger.training.losses import (
    Effects,
    LossConfig,
    counterfactual_effects,
    importance_target,
    jensen_shannon,
)

EXACT_UP_TO = 6
"""Experts up to which the Shapley credit is exact (all 2^M subsets); beyond, sampled orderings."""


def rank_correlation(x: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
    """Spearman's rho along ``axis`` (average ranks for ties); NaN where either side is constant."""
    rank_x = rankdata(x, axis=axis)
    rank_y = rankdata(y, axis=axis)
    rank_x -= rank_x.mean(axis, keepdims=True)
    rank_y -= rank_y.mean(axis, keepdims=True)
    numerator = (rank_x * rank_y).sum(axis)
    denominator = np.sqrt((rank_x**2).sum(axis) * (rank_y**2).sum(axis))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), np.nan)


class Importance(NamedTuple):
    """A counterfactual target of the tasks with targets: p (B, T', M, N) and the tokens that carry it."""

    tasks: list[str]
    p: Tensor
    has_target: Tensor


class Credit(NamedTuple):
    """Shapley credit of each expert per task and token.

    Attributes:
        tasks: the T' tasks measured.
        phi: (B, T', M, N), in units of the task's loss.
        stderr: (B, T', M, N) standard error of ``phi`` (sampled orderings), or None (exact).
        valid: (B, T', N) tokens whose cell holds a valid target pixel.
        total: (B, T', N) L(none) - L(all), which the credits sum to.
    """

    tasks: list[str]
    phi: Tensor
    stderr: Tensor | None
    valid: Tensor
    total: Tensor


def _tasks_with_targets(model: TIGER, output: TigerOutput, targets: Mapping[str, Tensor]) -> list:
    unknown = sorted(set(targets) - set(model.task_names))
    if unknown or not targets:
        raise ValueError(
            f"targets must name some of the model's tasks {model.task_names}, got {sorted(targets)}"
        )
    tasks = [task for task in model.tasks if task.name in targets]
    size = tuple(next(iter(output.predictions.values())).shape[-2:])
    for task in tasks:
        target = targets[task.name]
        if target.shape[0] != output.alpha.shape[0] or tuple(target.shape[-2:]) != size:
            raise ValueError(
                f"target {task.name!r} has shape {tuple(target.shape)}; expected batch "
                f"{output.alpha.shape[0]} at size {size}"
            )
    return tasks


def _effects(
    model: TIGER,
    output: TigerOutput,
    targets: Mapping[str, Tensor],
    removed: Tensor,
    removal: str,
    eps: float,
    chunk: int,
) -> tuple[list, Effects]:
    """Effects of the variants ``removed`` (V, M), decoded ``chunk`` variants at a time."""
    tasks = _tasks_with_targets(model, output, targets)
    full = {task.name: task.pixel_loss(output.predictions[task.name], targets[task.name]) for task in tasks}
    parts = []
    for start in range(0, removed.shape[0], chunk):
        logits = model.ablate(output, removed[start : start + chunk], removal, eps)
        parts.append(counterfactual_effects(tasks, logits, targets, full, output.grid))
    effects = Effects(torch.cat([part.delta for part in parts], 2), parts[0].loss, parts[0].valid)
    return tasks, effects


@torch.no_grad()
def counterfactual_importance(
    model: TIGER,
    output: TigerOutput,
    targets: Mapping[str, Tensor],
    config: LossConfig,
    removal: str | None = None,
) -> Importance:
    """The counterfactual target p of each expert per task and token (eq. 8-10, or ``config.target``), for
    the tasks with targets (``removal`` overrides ``config.removal``)."""
    experts = output.alpha.shape[2]
    removed = torch.eye(experts, device=output.alpha.device)
    tasks, effects = _effects(model, output, targets, removed, removal or config.removal, config.eps, experts)
    p, has_target = importance_target(effects, config.target, config.tau, config.eps, config.min_effect)
    return Importance([task.name for task in tasks], p, has_target)


def subsets(experts: int) -> Tensor:
    """(2^M, M) 0/1: row s holds the experts of the subset whose bit mask is s."""
    codes = torch.arange(2**experts)
    return ((codes[:, None] >> torch.arange(experts)) & 1).float()


def shapley_pairs(experts: int) -> tuple[Tensor, Tensor, Tensor]:
    """The terms of phi_k = sum_{s without k} w(|s|) [L(s) - L(s + k)], w(j) = j! (M - j - 1)! / M!.

    Returns ``without``, ``joined`` (M, 2^(M-1)) subset codes (bit k of a code: expert k present) and their
    weights (M, 2^(M-1)) float64. Each term is a difference of two losses, so an expert whose joining never
    changes a loss gets exactly 0.
    """
    codes = torch.arange(2**experts)
    without, joined, weights = [], [], []
    for k in range(experts):
        free = codes[(codes >> k) & 1 == 0]
        size = subsets(experts)[free].sum(1).long()
        without.append(free)
        joined.append(free | (1 << k))
        weights.append(
            torch.tensor([math.factorial(j) * math.factorial(experts - j - 1) for j in size.tolist()])
        )
    weight = torch.stack(weights).double() / math.factorial(experts)
    return torch.stack(without), torch.stack(joined), weight


@torch.no_grad()
def shapley_credit(
    model: TIGER,
    output: TigerOutput,
    targets: Mapping[str, Tensor],
    removal: str = "subtract",
    *,
    eps: float = 1e-6,
    permutations: int = 64,
    generator: torch.Generator | None = None,
    chunk: int | None = None,
) -> Credit:
    """The Shapley credit of each expert per task and token (see the module docstring).

    Args:
        model, output: a model and one of its forward passes.
        targets: {task: target at the prediction size} for any of the model's tasks.
        removal: how absent experts are removed (:func:`tiger.model.tiger.remove_experts`).
        eps: the floor of ``renormalize``.
        permutations: sampled orderings when M > :data:`EXACT_UP_TO`.
        generator: draws the orderings.
        chunk: subsets decoded per pass (default M).
    """
    experts = output.alpha.shape[2]
    device = output.alpha.device
    chunk = chunk or experts
    if experts <= EXACT_UP_TO:
        present = subsets(experts).to(device)
        tasks, effects = _effects(model, output, targets, 1.0 - present, removal, eps, chunk)
        delta = effects.delta.double()  # L(s) - L(the forward pass), (B, T', S, N)
        without, joined, weight = (x.to(device) for x in shapley_pairs(experts))
        gains = delta[:, :, without] - delta[:, :, joined]  # (B, T', M, 2^(M-1), N)
        phi = (weight[None, None, :, :, None] * gains).sum(3)
        total = delta[:, :, 0] - delta[:, :, -1]  # L(none) - L(all)
        return Credit([t.name for t in tasks], phi.float(), None, effects.valid, total.float())
    orders = torch.stack([torch.randperm(experts, generator=generator) for _ in range(permutations)])
    codes: dict[int, int] = {}
    prefixes = []  # per ordering, the subset code before each position and after the last
    for order in orders.tolist():
        code, row = 0, []
        for expert in order:
            row.append(codes.setdefault(code, len(codes)))
            code |= 1 << expert
        row.append(codes.setdefault(code, len(codes)))
        prefixes.append(row)
    present = torch.tensor([[(code >> k) & 1 for k in range(experts)] for code in codes], dtype=torch.float32)
    tasks, effects = _effects(model, output, targets, 1.0 - present.to(device), removal, eps, chunk)
    delta = effects.delta.double()
    index = torch.tensor(prefixes, device=device)  # (P, M + 1)
    gains = delta[:, :, index[:, :-1]] - delta[:, :, index[:, 1:]]  # (B, T', P, M): gain of order[i]
    marginal = torch.zeros(
        *delta.shape[:2], permutations, experts, delta.shape[-1], dtype=delta.dtype, device=device
    )
    position = orders.to(device)[None, None, :, :, None].expand_as(marginal)
    marginal.scatter_(3, position, gains)
    phi = marginal.mean(2)
    stderr = marginal.std(2) / math.sqrt(permutations)
    total = delta[:, :, codes[0]] - delta[:, :, codes[2**experts - 1]]
    return Credit([t.name for t in tasks], phi.float(), stderr.float(), effects.valid, total.float())


class RoutingStatistics(Metric):
    """Routing usage and faithfulness accumulated over images, as sums (exact under DDP).

    For every task t and expert k: the mean routing weight alpha. Per removal mode measured, over the tokens
    that carry a counterfactual target: the mean target p, JSD(p || alpha), the rate at which argmax alpha ==
    argmax p, and the mean Spearman correlation between alpha and p over the experts ("agreement with the
    training target"). With Shapley credit, over the tokens with a valid pixel: the mean credit of each
    expert, the Spearman correlation and top-1 agreement between alpha and phi (over tokens where neither is
    constant), and the routing mass on experts whose credit is <= 0 ("mass on useless experts").

    Args:
        task_names: the T tasks; expert_names: the M experts.
        removals: removal modes whose counterfactual target is compared with alpha (may be empty).
        shapley: whether Shapley credit is accumulated.
    """

    full_state_update = False

    def __init__(
        self,
        task_names: Sequence[str],
        expert_names: Sequence[str],
        removals: Sequence[str] = (),
        shapley: bool = False,
    ) -> None:
        super().__init__()
        self.task_names, self.expert_names = list(task_names), list(expert_names)
        self.removals, self.shapley = list(removals), bool(shapley)
        tasks, experts = len(self.task_names), len(self.expert_names)
        self._sum("alpha_sum", (tasks, experts))
        self._sum("alpha_count", ())
        per_mode = (len(self.removals), tasks)
        self._sum("p_sum", (*per_mode, experts))
        for name in ("tokens", "jsd_sum", "top1_sum", "rho_sum", "rho_count"):
            self._sum(name, per_mode)
        self._sum("credit_sum", (tasks, experts))
        for name in ("credit_tokens", "useless_sum", "credit_top1_sum", "credit_rho_sum", "credit_rho_count"):
            self._sum(name, (tasks,))

    def _sum(self, name: str, shape: tuple[int, ...]) -> None:
        self.add_state(name, torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")

    def update(
        self,
        alpha: Tensor,
        importance: Mapping[str, Importance] | None = None,
        credit: Credit | None = None,
    ) -> None:
        """alpha (B, T, M, N); importance: {removal: :class:`Importance`}; credit: :class:`Credit` of the
        first ``credit.phi.shape[0]`` images of the batch."""
        alpha = alpha.detach().double()
        sums = alpha.sum(2)
        if not torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
            raise ValueError(
                f"routing weights must sum to one over the experts (dim 2), got sums in "
                f"[{float(sums.min()):.4g}, {float(sums.max()):.4g}]"
            )
        self.alpha_sum += alpha.sum((0, 3))
        self.alpha_count += alpha.shape[0] * alpha.shape[3]
        for mode, removal in enumerate(self.removals):
            names, p, has_target = (importance or {})[removal]
            rows = [self.task_names.index(name) for name in names]
            q, p, keep = alpha[:, rows], p.detach().double(), has_target.bool()
            self.p_sum[mode, rows] += (p * keep[:, :, None]).sum((0, 3))
            self.tokens[mode, rows] += keep.sum((0, 2)).double()
            self.jsd_sum[mode, rows] += (jensen_shannon(p, q, dim=2) * keep).sum((0, 2))
            self.top1_sum[mode, rows] += ((q.argmax(2) == p.argmax(2)) & keep).sum((0, 2)).double()
            rho, counted = _spearman(q, p, keep)
            self.rho_sum[mode, rows] += rho
            self.rho_count[mode, rows] += counted
        if credit is not None:
            if not self.shapley:
                raise ValueError("these statistics were made without shapley=True")
            rows = [self.task_names.index(name) for name in credit.tasks]
            phi, keep = credit.phi.double(), credit.valid.bool()
            q = alpha[: phi.shape[0], rows]
            self.credit_sum[rows] += (phi * keep[:, :, None]).sum((0, 3))
            self.credit_tokens[rows] += keep.sum((0, 2)).double()
            self.useless_sum[rows] += ((q * (phi <= 0)).sum(2) * keep).sum((0, 2))
            informative = keep & (phi.amax(2) > phi.amin(2))
            self.credit_top1_sum[rows] += ((q.argmax(2) == phi.argmax(2)) & informative).sum((0, 2)).double()
            rho, counted = _spearman(q, phi, informative)
            self.credit_rho_sum[rows] += rho
            self.credit_rho_count[rows] += counted

    def compute(self) -> dict[str, Any]:
        """The figures so far::

            {"usage": {task: {expert: mean alpha}},
             "target_agreement": {removal: {task: {"spearman", "top1", "jsd", "tokens",
                                                   "importance": {expert: mean p}}}},
             "shapley": {task: {"spearman", "top1", "useless_mass", "tokens", "credit": {expert: mean phi}}}}

        Tasks without tokens are left out; an undefined mean is NaN.
        """
        usage = self.alpha_sum / self.alpha_count.clamp_min(1)
        result: dict[str, Any] = {
            "usage": {
                task: {expert: float(usage[t, k]) for k, expert in enumerate(self.expert_names)}
                for t, task in enumerate(self.task_names)
            },
            "target_agreement": {},
        }
        for m, removal in enumerate(self.removals):
            rows = {}
            for t, task in enumerate(self.task_names):
                tokens = float(self.tokens[m, t])
                if tokens:
                    rows[task] = {
                        "spearman": _ratio(self.rho_sum[m, t], self.rho_count[m, t]),
                        "top1": float(self.top1_sum[m, t]) / tokens,
                        "jsd": float(self.jsd_sum[m, t]) / tokens,
                        "tokens": tokens,
                        "importance": {
                            e: float(self.p_sum[m, t, k]) / tokens for k, e in enumerate(self.expert_names)
                        },
                    }
            result["target_agreement"][removal] = rows
        if self.shapley:
            rows = {}
            for t, task in enumerate(self.task_names):
                tokens = float(self.credit_tokens[t])
                if tokens:
                    rows[task] = {
                        "spearman": _ratio(self.credit_rho_sum[t], self.credit_rho_count[t]),
                        "top1": _ratio(self.credit_top1_sum[t], self.credit_rho_count[t]),
                        "useless_mass": float(self.useless_sum[t]) / tokens,
                        "tokens": tokens,
                        "credit": {
                            e: float(self.credit_sum[t, k]) / tokens for k, e in enumerate(self.expert_names)
                        },
                    }
            result["shapley"] = rows
        return result


def _spearman(q: Tensor, p: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """Per task: the sum of Spearman's rho between q and p over the experts (dim 2) of the kept tokens
    where it is defined, and the number of those tokens."""
    rho = torch.from_numpy(rank_correlation(q.cpu().numpy(), p.cpu().numpy(), axis=2)).to(q.device)
    counted = keep & ~rho.isnan()
    return torch.where(counted, rho, 0.0).sum((0, 2)), counted.sum((0, 2)).double()


def _ratio(numerator: Tensor, denominator: Tensor) -> float:
    return float(numerator / denominator) if denominator > 0 else float("nan")


def mean_usage(
    alpha: Tensor, task_names: Sequence[str], expert_names: Sequence[str]
) -> dict[str, dict[str, float]]:
    """{task: {expert: mean routing weight}} of one batch alpha (B, T, M, N) (:class:`RoutingStatistics`)."""
    statistics = RoutingStatistics(task_names, expert_names)
    statistics.update(alpha)
    return statistics.compute()["usage"]


@dataclass(frozen=True)
class RoutingReport:
    """Expert usage and, given targets, routing faithfulness over a set of images.

    Attributes:
        usage: {task: {expert: mean routing weight}} over the images and tokens (rows sum to one).
        agreement: {task: {"jsd", "top1", "spearman", "tokens", "importance"}}: alpha against the model's own
            counterfactual training target, for the tasks with targets; None without.
        shapley: {task: {"spearman", "top1", "useless_mass", "tokens", "credit"}}: alpha against exact
            Shapley credit, for the tasks with targets; None without.
    """

    usage: dict[str, dict[str, float]]
    agreement: dict[str, dict[str, Any]] | None = None
    shapley: dict[str, dict[str, Any]] | None = None

    def usage_table(self) -> str:
        return format_usage_table(self.usage)

    def agreement_table(self) -> str:
        if self.agreement is None:
            return "(no targets: no routing/counterfactual agreement)"
        rows = [
            [task, f"{r['jsd']:.4f}", f"{r['top1']:.3f}", f"{r['spearman']:.3f}", f"{int(r['tokens'])}"]
            for task, r in self.agreement.items()
        ]
        return text_table(["task", "JSD", "top-1", "Spearman", "tokens"], rows)

    def shapley_table(self) -> str:
        if self.shapley is None:
            return "(no targets: no Shapley credit)"
        return format_shapley_table(self.shapley)

    def __str__(self) -> str:
        text = "Mean routing weight per task and expert:\n" + self.usage_table()
        if self.agreement is not None:
            text += "\n\nRouting vs the counterfactual training target:\n" + self.agreement_table()
        if self.shapley is not None:
            text += "\n\nRouting vs Shapley credit:\n" + self.shapley_table()
        return text


def format_usage_table(usage: dict[str, dict[str, float]]) -> str:
    """{task: {expert: weight}} -> plain-text table: rows tasks, columns experts, percentages, one decimal."""
    tasks = list(usage)
    if not tasks:
        raise ValueError("usage is empty")
    experts = list(usage[tasks[0]])
    rows = [[task, *(f"{100 * usage[task][expert]:.1f}%" for expert in experts)] for task in tasks]
    return text_table(["task", *experts], rows, rule=True)


def format_shapley_table(shapley: dict[str, dict[str, Any]]) -> str:
    """Per task: Spearman(alpha, phi), top-1 agreement, mass on useless experts, each expert's mean credit."""
    tasks = list(shapley)
    experts = list(shapley[tasks[0]]["credit"]) if tasks else []
    rows = [
        [task, f"{r['spearman']:+.3f}", f"{r['top1']:.3f}", f"{100 * r['useless_mass']:.1f}%",
         *(f"{r['credit'][e]:+.4f}" for e in experts)]
        for task, r in shapley.items()
    ]  # fmt: skip
    return text_table(
        ["task", "Spearman", "top-1", "useless", *(f"phi {e}" for e in experts)], rows, rule=True
    )
