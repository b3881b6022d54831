"""Loss balancing, the one owner of eq. 14's total: sum_j w_j L_j + lambda_cf L_cf, with fixed or adaptive
task weights w_j.

One class per method, all :class:`TaskBalancer` modules owned by the LightningModule, so their state
(logits, weights, log-variances and the balancer's own optimizer) is part of its ``state_dict`` and of
every checkpoint:

=====================  =====================================================================
``FixedWeights``       w_j = lambda_j, the task weights of the recipe (the default)
``FAMO``               Liu et al., NeurIPS 2023, with Argus's defaults (lr 0.025, decay 0.001)
``GradNorm``           Chen et al., ICML 2018, on the routed task tokens (Argus's approximation)
``UncertaintyWeighting``  Kendall et al., CVPR 2018
=====================  =====================================================================

The adaptive methods weight the raw task losses L_j and replace the lambda_j (FAMO and uncertainty
weighting are invariant to a constant scale of L_j anyway). The counterfactual term keeps its own weight
lambda_cf whatever the method: :meth:`TaskBalancer.forward` adds it to the weighted task losses.

Under DDP the loss values and gradient norms that drive an update are averaged over the processes first,
so every process takes the same update and holds the same weights. Updates are computed in float32
whatever the precision of the losses (bf16 autocast).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from tiger import options
from tiger.tasks import Task


def mean_over_processes(values: Tensor) -> Tensor:
    """The mean of a detached tensor over the DDP processes (itself when not distributed)."""
    values = values.detach().float()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= dist.get_world_size()
    return values


class TaskBalancer(nn.Module):
    """Forms the total loss of eq. 14 from the objective's terms: sum_j w_j L_j + lambda_cf L_cf.

    Subclasses choose the task weights w_j (:meth:`combine`); this class adds the counterfactual term.

    Args:
        tasks: the tasks in model order; the terms must hold a loss for exactly these.
        lambda_cf: the weight of L_cf (``model.loss.lambda_cf``), >= 0.

    Attributes:
        task_names: the tasks in model order.
        needs_features: :meth:`combine` uses ``features`` (the routed task tokens).
        needs_losses_after_step: :meth:`after_step` must be called after every optimizer step with the
            task losses of the same batch, recomputed with the updated parameters.
    """

    needs_features = False
    needs_losses_after_step = False

    def __init__(self, tasks: Sequence[Task], lambda_cf: float = 0.0) -> None:
        super().__init__()
        self.task_names = [task.name for task in tasks]
        if not self.task_names:
            raise ValueError("a task balancer needs at least one task")
        self.lambda_cf = float(lambda_cf)

    def forward(self, terms: Mapping[str, Tensor], features: Tensor | None = None) -> Tensor:
        """Eq. 14: sum_j w_j L_j (+ lambda_cf L_cf when ``terms`` hold ``"cf"``), a scalar with the graph.

        Args:
            terms: {task: L_j for every task, "cf": L_cf (optional)}, the terms of
                :class:`tiger.training.losses.TigerLoss`.
            features: the routed task tokens f(t) (B, T, N, d) the losses were computed from (GradNorm).
        """
        unknown = sorted(set(terms) - set(self.task_names) - {"cf"})
        if unknown:
            raise KeyError(f"the balancer weights tasks {self.task_names} and 'cf', but got terms {unknown}")
        total = self.combine({name: terms[name] for name in self.task_names if name in terms}, features)
        if "cf" in terms:
            total = total + self.lambda_cf * terms["cf"]  # eq. 14
        return total

    def stack(self, losses: Mapping[str, Tensor]) -> Tensor:
        """{task: scalar L_j} -> (T,) in task order; raises naming a missing or unknown task."""
        if set(losses) != set(self.task_names):
            raise KeyError(
                f"the balancer weights tasks {self.task_names} but got losses for {sorted(losses)}"
            )
        return torch.stack([losses[name] for name in self.task_names])

    def weights(self) -> Tensor:
        """The weights w_j of the latest forward (before any: the current ones), (T,) float32, detached."""
        raise NotImplementedError

    def weights_by_task(self) -> dict[str, float]:
        return dict(zip(self.task_names, self.weights().tolist(), strict=True))

    def combine(self, losses: Mapping[str, Tensor], features: Tensor | None = None) -> Tensor:
        """The task part of eq. 14, sum_j w_j L_j (a scalar carrying the gradient of the L_j)."""
        raise NotImplementedError

    def after_step(self, losses: Mapping[str, Tensor]) -> None:
        """Called after the optimizer step with the same batch's losses at the new parameters (FAMO)."""


class _OwnOptimizerState:
    """get/set_extra_state for a balancer that steps its own ``self.optimizer``.

    The optimizer state of a checkpoint is loaded into the optimizer at its next step, when the balancer's
    tensors sit on their final device (Adam casts the state to the device of its parameters on loading).
    """

    optimizer: torch.optim.Optimizer
    _pending_state: dict[str, Any] | None = None

    def get_extra_state(self) -> dict[str, Any]:
        return {"optimizer": self._pending_state or self.optimizer.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, Mapping) or "optimizer" not in state:
            raise ValueError(f"{type(self).__name__}: the checkpoint's balancer state has no 'optimizer'")
        self._pending_state = dict(state["optimizer"])

    def _optimizer_step(self, parameter: nn.Parameter, grad: Tensor) -> None:
        if self._pending_state is not None:
            self.optimizer.load_state_dict(self._pending_state)
            self._pending_state = None
        parameter.grad = grad.to(parameter.dtype)
        self.optimizer.step()
        parameter.grad = None


class FixedWeights(TaskBalancer):
    """w_j = lambda_j (``task.weight``): eq. 14 as the paper writes it, ``sum_j lambda_j L_task^(j)``."""

    def __init__(self, tasks: Sequence[Task], lambda_cf: float = 0.0) -> None:
        super().__init__(tasks, lambda_cf)
        self.lambdas = [float(task.weight) for task in tasks]

    def weights(self) -> Tensor:
        return torch.tensor(self.lambdas, dtype=torch.float32)

    def combine(self, losses: Mapping[str, Tensor], features: Tensor | None = None) -> Tensor:
        self.stack(losses)  # checks the task names
        return sum(weight * losses[name] for name, weight in zip(self.task_names, self.lambdas, strict=True))


class FAMO(_OwnOptimizerState, TaskBalancer):
    """Fast Adaptive Multitask Optimization (Liu, Feng, Stone and Liu, NeurIPS 2023).

    Task logits xi (T,), z = softmax(xi). With the task losses l_i(theta_t) of the batch and their lower
    bounds b_i (0: every task loss here is >= 0), the network follows

        d_t = sum_i c_t z_i / (l_i - b_i + eps) grad l_i(theta_t),   c_t = (sum_i z_i / (l_i - b_i + eps))^-1

    i.e. the gradient of ``sum_i w_i l_i`` with the weights w_i = T c_t z_i / (l_i - b_i + eps), held
    constant, which sum to T, the number of tasks (Argus's normalisation; the paper's sum to one, a
    constant factor). After the optimizer step the same batch's losses are recomputed at theta_{t+1} and

        delta_i = log(l_i(theta_t) - b_i + eps) - log(l_i(theta_{t+1}) - b_i + eps)
        xi_{t+1} = xi_t - beta (J_z(xi_t)^T delta + gamma xi_t),     J_z = diag(z) - z z^T

    where the bracket is handed to the balancer's own Adam as the gradient (the paper's Algorithm 2 and the
    official code; Adam's coupled weight decay is the gamma xi term). Argus's defaults: beta = 0.025,
    gamma = 0.001, eps = 1e-8. Both l(theta_t) and l(theta_{t+1}) are averaged over the DDP processes.

    Args:
        tasks: the tasks, in model order (``base``: :class:`TaskBalancer`'s ``lambda_cf``).
        lr: beta, the learning rate of the logits' Adam.
        weight_decay: gamma, the regularisation of the logits.
        eps: added to l_i - b_i inside the logarithms.
    """

    needs_losses_after_step = True  # the same batch's losses after each optimizer step drive the update

    def __init__(
        self, tasks: Sequence[Task], lr: float = 0.025, weight_decay: float = 0.001, eps: float = 1e-8, **base
    ) -> None:
        super().__init__(tasks, **base)
        self.lr = options.real(lr, "lr", minimum=0.0, exclusive=True)
        self.weight_decay = options.real(weight_decay, "weight_decay", minimum=0.0)
        self.eps = options.real(eps, "eps", minimum=0.0, exclusive=True)
        count = len(self.task_names)
        self.logits = nn.Parameter(torch.zeros(count), requires_grad=False)  # xi; stepped by its own Adam
        self.register_buffer("min_losses", torch.zeros(count))  # b
        self.register_buffer("last_weights", torch.ones(count))  # w_i of the latest forward, for logging
        self.optimizer = torch.optim.Adam([self.logits], lr=self.lr, weight_decay=self.weight_decay)
        self._losses_before: Tensor | None = None

    def _shifted(self, losses: Tensor) -> Tensor:
        return losses - self.min_losses + self.eps

    def weights(self) -> Tensor:
        return self.last_weights.detach().float().clone()

    def combine(self, losses: Mapping[str, Tensor], features: Tensor | None = None) -> Tensor:
        stacked = self.stack(losses)
        before = mean_over_processes(stacked)  # l(theta_t), the same on every process
        z = self.logits.detach().float().softmax(0)
        inverse = z / self._shifted(before)
        weights = len(self.task_names) * inverse / inverse.sum()  # T c_t z_i / l_i
        if torch.is_grad_enabled():
            self._losses_before = before
            self.last_weights.copy_(weights)
        return (weights * stacked.float()).sum()

    def after_step(self, losses: Mapping[str, Tensor]) -> None:
        if self._losses_before is None:
            raise RuntimeError("FAMO.after_step needs a training forward on the same batch before the step")
        after = mean_over_processes(self.stack(losses))  # l(theta_{t+1}), same batch
        delta = self._shifted(self._losses_before).log() - self._shifted(after).log()
        z = self.logits.detach().float().softmax(0)
        grad = z * (delta - (z * delta).sum())  # J_z^T delta, J_z = diag(z) - z z^T
        self._optimizer_step(self.logits, grad)
        self._losses_before = None


class GradNorm(_OwnOptimizerState, TaskBalancer):
    """GradNorm (Chen, Badrinarayanan, Lee and Rabinovich, ICML 2018) on the routed task tokens.

    Weights w_i, starting at 1. The paper measures G_i = ||grad_W w_i L_i||_2 at the last shared layer W;
    here, as Argus does, at the routed feature map of the task: the fused tokens f(t_i) (B, N, d),

        G_i = w_i g_i,   g_i = mean over b, n of ||dL_i / df_{b,n}(t_i)||_2        (norm over the d channels)

    With the loss ratios L~_i = L_i(t) / L_i(0) and the inverse training rates r_i = L~_i / mean_j L~_j,

        L_grad = sum_i | G_i - mean_j(G_j) r_i^alpha |_1

    with the target mean_j(G_j) r_i^alpha held constant, so dL_grad / dw_i = sign(G_i - target_i) g_i. This
    gradient is handed to the balancer's own Adam; then the weights are renormalised to sum to T, the number
    of tasks (clamped at ``min_weight`` first). The network's loss at step t uses w(t); g_i and L_i are
    averaged over the DDP processes before the update. L_i(0) are the losses of the first training step.
    The weights are updated at every training forward (with gradient accumulation: every micro-batch).

    Args:
        tasks: the tasks, in model order (``base``: :class:`TaskBalancer`'s ``lambda_cf``).
        alpha: the restoring force alpha (the paper: 1.5 on NYUv2, 0.12 on its toy problem).
        lr: learning rate of the weights' Adam.
        min_weight: lower bound of each weight before the renormalisation.
    """

    needs_features = True

    def __init__(
        self, tasks: Sequence[Task], alpha: float = 1.5, lr: float = 0.025, min_weight: float = 1e-4, **base
    ) -> None:
        super().__init__(tasks, **base)
        self.alpha = options.real(alpha, "alpha", minimum=0.0)
        self.lr = options.real(lr, "lr", minimum=0.0, exclusive=True)
        self.min_weight = options.real(min_weight, "min_weight", minimum=0.0, exclusive=True)
        count = len(self.task_names)
        self.task_weights = nn.Parameter(torch.ones(count), requires_grad=False)  # stepped by its own Adam
        self.register_buffer("initial_losses", torch.zeros(count))  # L_i(0)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))  # (not bool: DDP broadcasts it)
        self.optimizer = torch.optim.Adam([self.task_weights], lr=self.lr)
        self._used_weights: Tensor | None = None

    def weights(self) -> Tensor:
        """w(t) of the latest forward (before that forward's update), or the current weights before any."""
        used = self._used_weights if self._used_weights is not None else self.task_weights
        return used.detach().float().clone()

    def gradient_norms(self, losses: Tensor, features: Tensor) -> Tensor:
        """g_i: the mean over batch and tokens of ||dL_i / df(t_i)||, (T,); ``features`` is (B, T, N, d)."""
        if features.ndim != 4 or features.shape[1] != len(self.task_names):
            raise ValueError(
                f"GradNorm needs the routed task tokens (B, T={len(self.task_names)}, N, d), "
                f"got {tuple(features.shape)}"
            )
        norms = []
        for index in range(len(self.task_names)):
            (grad,) = torch.autograd.grad(losses[index], features, retain_graph=True)
            norms.append(grad[:, index].float().norm(dim=-1).mean())
        return torch.stack(norms)

    def update(self, losses: Tensor, norms: Tensor) -> None:
        """One GradNorm step of the weights from the task losses L_i(t) and gradient norms g_i, both (T,)."""
        losses, norms = mean_over_processes(losses), mean_over_processes(norms)
        if int(self.updates) == 0:
            self.initial_losses.copy_(losses)
        self.updates += 1
        weights = self.task_weights.detach().float()
        weighted = weights * norms  # G_i
        ratios = losses / self.initial_losses.clamp_min(torch.finfo(torch.float32).tiny)  # L~_i
        target = weighted.mean() * (ratios / ratios.mean()).pow(self.alpha)
        self._optimizer_step(self.task_weights, torch.sign(weighted - target) * norms)
        with torch.no_grad():
            clamped = self.task_weights.clamp_min(self.min_weight)
            self.task_weights.copy_(len(self.task_names) * clamped / clamped.sum())

    def combine(self, losses: Mapping[str, Tensor], features: Tensor | None = None) -> Tensor:
        stacked = self.stack(losses)
        self._used_weights = self.task_weights.detach().float().clone()  # w(t); the update is in place
        total = (self._used_weights * stacked.float()).sum()
        if torch.is_grad_enabled() and stacked.requires_grad:
            if features is None:
                raise ValueError("GradNorm needs the routed task tokens: pass features=output fused tokens")
            self.update(stacked.detach(), self.gradient_norms(stacked, features))
        return total


class UncertaintyWeighting(TaskBalancer):
    """Homoscedastic uncertainty weighting (Kendall, Gal and Cipolla, CVPR 2018, eq. 7).

        L = sum_i 1 / (2 sigma_i^2) L_i + log sigma_i = sum_i (exp(-s_i) L_i + s_i) / 2,   s_i = log sigma_i^2

    The log-variances s_i (starting at 0, sigma = 1) are parameters trained with the network by its
    optimizer (DDP averages their gradients like any other). The task weights are w_i = exp(-s_i) / 2; at
    the optimum of s_i, sigma_i^2 = L_i, so w_i = 1 / (2 L_i): each task weighted by its inverse loss scale.
    """

    def __init__(self, tasks: Sequence[Task], lambda_cf: float = 0.0) -> None:
        super().__init__(tasks, lambda_cf)
        self.log_variances = nn.Parameter(torch.zeros(len(self.task_names)))
        self._used_weights: Tensor | None = None

    def weights(self) -> Tensor:
        s = self.log_variances if self._used_weights is None else self._used_weights
        return 0.5 * torch.exp(-s.detach().float())

    def combine(self, losses: Mapping[str, Tensor], features: Tensor | None = None) -> Tensor:
        stacked = self.stack(losses).float()
        s = self.log_variances.float()
        self._used_weights = s.detach().clone()
        return 0.5 * (torch.exp(-s) * stacked + s).sum()
