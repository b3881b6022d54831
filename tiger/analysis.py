"""Routing analysis: expert usage, routing vs counterfactual importance (faithfulness), task similarity.

Everything here works for any expert set and task list: it reads the routing weights alpha (B, T, M, N) of
:class:`tiger.model.TigerOutput` and the model's own counterfactual forward
(:meth:`tiger.model.TIGER.counterfactual`), never a training loss object. No plotting here (see
:mod:`tiger.viz`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata
from torch import Tensor, nn
from torchmetrics import Metric

from tiger.losses import causal_importance, counterfactual_delta, jensen_shannon, pixel_loss
from tiger.model import TIGER, TigerOutput
from tiger.tables import text_table
from tiger.tasks import Task

ArrayLike = np.ndarray | Tensor


def _numpy(value: ArrayLike) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


# ----------------------------------------------------------------------------------------------------------
# Prediction colour maps


def expert_usage(
    alpha: ArrayLike | Sequence[ArrayLike], task_names: Sequence[str], expert_names: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Mean routing weight per task and expert over images and tokens.

    Args:
        alpha: routing weights (B, T, M, N), or a list of such batches (N may differ between batches).
        task_names: T names; expert_names: M names.

    Returns:
        {task: {expert: mean weight}}; each row sums to one (checked: ``alpha`` must sum to one over M).
    """
    batches = [alpha] if isinstance(alpha, np.ndarray | Tensor) else list(alpha)
    if not batches:
        raise ValueError("expert_usage needs at least one batch of routing weights")
    shape = (len(task_names), len(expert_names))
    total = np.zeros(shape, dtype=np.float64)
    count = 0
    for index, batch in enumerate(batches):
        weights = _numpy(batch).astype(np.float64)
        if weights.ndim != 4 or weights.shape[1:3] != shape:
            raise ValueError(
                f"batch {index}: alpha must be (B, T, M, N) with T, M = {shape}, got {weights.shape}"
            )
        sums = weights.sum(2)
        if not np.allclose(sums, 1.0, atol=1e-3):
            raise ValueError(
                f"batch {index}: routing weights must sum to one over the experts (dim 2), got sums in "
                f"[{sums.min():.4g}, {sums.max():.4g}]"
            )
        total += weights.sum((0, 3))
        count += weights.shape[0] * weights.shape[3]
    if count == 0:
        raise ValueError("expert_usage got only empty batches (B * N == 0)")
    mean = total / count
    return {
        task: {expert: float(mean[t, m]) for m, expert in enumerate(expert_names)}
        for t, task in enumerate(task_names)
    }


def routing_agreement(
    alpha: ArrayLike, p: ArrayLike, valid: ArrayLike | None, task_names: Sequence[str]
) -> dict[str, dict[str, float]]:
    """How well the routing weights follow the counterfactual causal importance, per task.

    Args:
        alpha: routing weights (B, T, M, N).
        p: causal importance (B, T, M, N), e.g. from :func:`counterfactual_importance`.
        valid: (B, T, N) tokens to count (the ``valid`` of :func:`counterfactual_importance`), or None for
            all.
        task_names: T names.

    Returns:
        {task: {"jsd": mean JSD(p || alpha) (eq. 12), "top1": rate of argmax alpha == argmax p,
        "spearman": mean Spearman rank correlation between alpha and p over the experts of a token,
        "tokens": number of valid tokens}}. Spearman uses average ranks for ties; tokens where alpha or p
        is constant over the experts (correlation undefined) are left out of its mean. With M = 2 it is
        +1 when both pick the same expert and -1 otherwise (the information of top-1); with M = 1 it is
        NaN. Every metric is NaN for a task without valid tokens.
    """
    q = torch.as_tensor(_numpy(alpha), dtype=torch.float64)
    target = torch.as_tensor(_numpy(p), dtype=torch.float64)
    if q.ndim != 4 or q.shape != target.shape or q.shape[1] != len(task_names):
        raise ValueError(
            f"alpha and p must both be (B, T, M, N) with T = {len(task_names)}, got {tuple(q.shape)} and "
            f"{tuple(target.shape)}"
        )
    batch, tasks, experts, tokens = q.shape
    if valid is None:
        mask = torch.ones(batch, tasks, tokens, dtype=torch.bool)
    else:
        mask = torch.as_tensor(_numpy(valid)).bool()
        if mask.shape != (batch, tasks, tokens):
            raise ValueError(f"valid must be (B, T, N) = {(batch, tasks, tokens)}, got {tuple(mask.shape)}")
    jsd = jensen_shannon(target, q, dim=2)  # (B, T, N)
    top1 = q.argmax(2) == target.argmax(2)
    spearman = torch.from_numpy(rank_correlation(q.numpy(), target.numpy(), axis=2))
    result: dict[str, dict[str, float]] = {}
    for index, task in enumerate(task_names):
        keep = mask[:, index]
        rho = spearman[:, index][keep]
        rho = rho[~rho.isnan()]
        result[task] = {
            "jsd": float(jsd[:, index][keep].mean()) if keep.any() else float("nan"),
            "top1": float(top1[:, index][keep].double().mean()) if keep.any() else float("nan"),
            "spearman": float(rho.mean()) if rho.numel() else float("nan"),
            "tokens": float(keep.sum()),
        }
    return result


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


def _cosine_matrix(vectors: Tensor) -> np.ndarray:
    unit = F.normalize(vectors.double().flatten(1), dim=1)
    return (unit @ unit.T).clamp(-1.0, 1.0).numpy()


@torch.no_grad()
def task_similarity(
    model: nn.Module, hyper: Literal["outputs", "weights"] = "outputs"
) -> dict[str, np.ndarray]:
    """Cosine similarities (T, T) between the tasks' representations along the routing path.

    Args:
        model: a :class:`tiger.model.TIGER`.
        hyper: what stands for a task after the hyper-network (eq. 4).
            ``"outputs"`` (default): the concatenation [g(t), h(t)] of the hyper-network's two task MLPs,
            i.e. the whole task-dependent part of the query projection in its own coordinates. It is
            informative from initialisation on (V starts at zero, so W_Q(t) - W0 is zero at first).
            ``"weights"``: the flattened update [W_Q(t) - W0, b_Q(t) - b0] = [U diag(g(t)) V^T, h(t)],
            i.e. the change each task makes to the query projection itself.

    Returns:
        {"instruction": of t0 (only when the model uses instructions), "task": of t = LayerNorm(t0) + p_t
        (eq. 3), "hyper": after the hyper-network}, each float64 (T, T), symmetric with a unit diagonal
        (a zero vector gets 0 similarity, its own included).
    """
    if hyper not in ("outputs", "weights"):
        raise ValueError(f"hyper must be 'outputs' or 'weights', got {hyper!r}")
    representation = model.task_representation
    tasks = representation()
    sims: dict[str, np.ndarray] = {}
    if representation.uses_instructions:
        sims["instruction"] = _cosine_matrix(representation.instruction_embeddings)
    sims["task"] = _cosine_matrix(tasks)
    network = model.hyper
    if hyper == "outputs":
        sims["hyper"] = _cosine_matrix(torch.cat([network.g(tasks), network.h(tasks)], dim=1))
    else:
        weight, bias = network.weight(tasks)
        sims["hyper"] = _cosine_matrix(
            torch.cat([(weight - network.w0).flatten(1), bias - network.b0], dim=1)
        )
    return sims


@torch.no_grad()
def counterfactual_importance(
    model: TIGER,
    output: TigerOutput,
    targets: Mapping[str, Tensor],
    removal: str = "subtract",
    tau: float = 1.0,
    eps: float = 1e-6,
) -> tuple[list[Task], Tensor, Tensor]:
    """The causal importance p of each expert per task and token (eq. 8-10), for the tasks with targets.

    Args:
        model: the model that produced ``output``.
        output: a forward pass of ``model``.
        targets: {task: target at the prediction size} for any of the model's tasks.
        removal: how an expert is removed (:func:`tiger.model.remove_expert`).
        tau, eps: eq. 9-10.

    Returns:
        tasks: the tasks with targets, in the model's order (T' of them).
        p: (B, T', M, N), summing to one over the experts.
        valid: (B, T', N) tokens whose cell holds a valid target pixel.
    """
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
    counterfactual = model.counterfactual(output, removal, eps)
    full = {task.name: pixel_loss(task, output.predictions[task.name], targets[task.name]) for task in tasks}
    delta, valid = counterfactual_delta(tasks, counterfactual, targets, full, output.grid)
    return tasks, causal_importance(delta, tau, eps, dim=2), valid


@dataclass(frozen=True)
class RoutingReport:
    """Expert usage and, given targets, routing faithfulness over a set of images.

    Attributes:
        usage: {task: {expert: mean routing weight}} over the images and tokens (rows sum to one).
        agreement: {task: {"jsd", "top1", "spearman", "tokens"}} of :func:`routing_agreement` between
            alpha and the counterfactual causal importance p, for the tasks with targets; None without.
    """

    usage: dict[str, dict[str, float]]
    agreement: dict[str, dict[str, float]] | None = None

    def usage_table(self) -> str:
        return format_usage_table(self.usage)

    def agreement_table(self) -> str:
        if self.agreement is None:
            return "(no targets: no routing/counterfactual agreement)"
        rows = [
            [
                task,
                f"{row['jsd']:.4f}",
                f"{row['top1']:.3f}",
                f"{row['spearman']:.3f}",
                f"{int(row['tokens'])}",
            ]
            for task, row in self.agreement.items()
        ]
        return text_table(["task", "JSD", "top-1", "Spearman", "tokens"], rows)

    def __str__(self) -> str:
        text = "Mean routing weight per task and expert:\n" + self.usage_table()
        if self.agreement is not None:
            text += "\n\nRouting vs counterfactual importance:\n" + self.agreement_table()
        return text


def format_usage_table(usage: dict[str, dict[str, float]]) -> str:
    """{task: {expert: weight}} -> plain-text table: rows tasks, columns experts, percentages, one decimal."""
    tasks = list(usage)
    if not tasks:
        raise ValueError("usage is empty")
    experts = list(usage[tasks[0]])
    rows = [[task, *(f"{100 * usage[task][expert]:.1f}%" for expert in experts)] for task in tasks]
    return text_table(["task", *experts], rows, rule=True)


class RoutingStatistics(Metric):
    """Routing usage and faithfulness accumulated over a data set, as sums (exact under DDP).

    For every task t and expert k: the mean routing weight alpha and, for each removal mode, the mean
    causal importance p; per task and removal mode, over the tokens with a valid target pixel: the mean
    JSD(p || alpha), the rate at which argmax alpha == argmax p, and the mean Spearman correlation between
    alpha and p over the experts (tokens where either is constant over the experts are left out).

    Args:
        task_names: the T tasks; expert_names: the M experts.
        removals: removal modes whose counterfactual importance is measured (may be empty).
    """

    full_state_update = False

    def __init__(
        self, task_names: Sequence[str], expert_names: Sequence[str], removals: Sequence[str]
    ) -> None:
        super().__init__()
        self.task_names, self.expert_names, self.removals = (
            list(task_names),
            list(expert_names),
            list(removals),
        )
        shape = (len(self.task_names), len(self.expert_names))
        self.add_state("alpha_sum", torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("alpha_count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        per_mode = (len(self.removals), len(self.task_names))
        self.add_state("p_sum", torch.zeros(*per_mode, shape[1], dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("jsd_sum", "top1_sum", "tokens", "rho_sum", "rho_count"):
            self.add_state(name, torch.zeros(per_mode, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, alpha: Tensor, importance: Mapping[str, tuple[Sequence[str], Tensor, Tensor]]) -> None:
        """alpha (B, T, M, N); importance: {removal: (task names, p (B, T', M, N), valid (B, T', N))}."""
        alpha = alpha.detach().double()
        self.alpha_sum += alpha.sum((0, 3))
        self.alpha_count += alpha.shape[0] * alpha.shape[3]
        for mode_index, removal in enumerate(self.removals):
            names, p, valid = importance[removal]
            rows = [self.task_names.index(name) for name in names]
            q, p, valid = alpha[:, rows], p.detach().double(), valid.bool()
            weight = valid[:, :, None].double()  # (B, T', 1, N)
            self.p_sum[mode_index, rows] += (p * weight).sum((0, 3))
            self.tokens[mode_index, rows] += valid.sum((0, 2)).double()
            self.jsd_sum[mode_index, rows] += (jensen_shannon(p, q, dim=2) * valid).sum((0, 2))
            self.top1_sum[mode_index, rows] += ((q.argmax(2) == p.argmax(2)) & valid).sum((0, 2)).double()
            rho = torch.from_numpy(rank_correlation(q.cpu().numpy(), p.cpu().numpy(), axis=2)).to(q.device)
            counted = valid & ~rho.isnan()
            self.rho_sum[mode_index, rows] += torch.where(counted, rho, 0.0).sum((0, 2))
            self.rho_count[mode_index, rows] += counted.sum((0, 2)).double()

    def compute(self) -> dict[str, dict]:
        """{"usage": {task: {expert: weight}}, "faithfulness": {removal: {task: {"spearman", "top1", "jsd",
        "tokens", "importance": {expert: mean p}}}}}."""
        usage = self.alpha_sum / self.alpha_count.clamp_min(1)
        result: dict[str, dict] = {
            "usage": {
                task: {expert: float(usage[t, k]) for k, expert in enumerate(self.expert_names)}
                for t, task in enumerate(self.task_names)
            },
            "faithfulness": {},
        }
        for m, removal in enumerate(self.removals):
            rows = {}
            for t, task in enumerate(self.task_names):
                tokens = float(self.tokens[m, t])
                if tokens == 0:
                    continue
                rows[task] = {
                    "spearman": float(self.rho_sum[m, t] / self.rho_count[m, t])
                    if self.rho_count[m, t] > 0
                    else float("nan"),
                    "top1": float(self.top1_sum[m, t]) / tokens,
                    "jsd": float(self.jsd_sum[m, t]) / tokens,
                    "tokens": tokens,
                    "importance": {
                        expert: float(self.p_sum[m, t, k]) / tokens
                        for k, expert in enumerate(self.expert_names)
                    },
                }
            result["faithfulness"][removal] = rows
        return result
