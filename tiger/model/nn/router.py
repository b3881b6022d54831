"""Task-instruction-guided token routing (Sec. 3.3, eq. 4-7)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


class QueryEncoder(nn.Module):
    """The lightweight shared vision encoder that produces the query tokens q_n.

    Three stride-2 convolutions (GroupNorm, GELU) on the image resized to 8x the token grid, then a 1x1
    projection to d: one d-dim query per token of the grid.

    Args:
        dim: token width d.
        width: channels of the convolutional stem.
    """

    stride = 8

    def __init__(self, dim: int, width: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for out in (width // 2, width, width):
            layers += [nn.Conv2d(channels, out, 3, 2, 1, bias=False), nn.GroupNorm(8, out), nn.GELU()]
            channels = out
        layers.append(nn.Conv2d(width, dim, 1))
        self.stem = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor, grid: tuple[int, int]) -> Tensor:
        """images (B, 3, H0, W0) in [0, 1] -> queries (B, N, d) on the (H, W) grid."""
        size = (grid[0] * self.stride, grid[1] * self.stride)
        x = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        return rearrange(self.stem((x - self.mean) / self.std), "b d h w -> b (h w) d")


class HyperQueryProjection(nn.Module):
    """The low-rank hyper-network that conditions the query projection on the task (eq. 4-5).

    W_Q(t) = W0 + U diag(g(t)) V^T,  b_Q(t) = b0 + h(t),  q_n(t) = q_n W_Q(t) + b_Q(t).

    Args:
        dim: token width d.
        task_dim: width d_t of the task representation t.
        rank: r, the rank of the task-dependent update.
        hidden: hidden width of the MLPs g and h.
    """

    def __init__(self, dim: int, task_dim: int, rank: int = 16, hidden: int = 256) -> None:
        super().__init__()
        self.w0 = nn.Parameter(nn.init.trunc_normal_(torch.empty(dim, dim), std=dim**-0.5))
        self.b0 = nn.Parameter(torch.zeros(dim))
        self.u = nn.Parameter(nn.init.trunc_normal_(torch.empty(dim, rank), std=dim**-0.5))
        self.v = nn.Parameter(torch.zeros(dim, rank))  # zero: W_Q(t) starts at W0, as LoRA does
        self.g = nn.Sequential(nn.Linear(task_dim, hidden), nn.GELU(), nn.Linear(hidden, rank))
        self.h = nn.Sequential(nn.Linear(task_dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def weight(self, tasks: Tensor) -> tuple[Tensor, Tensor]:
        """Explicit W_Q(t) (T, d, d) and b_Q(t) (T, d) for task representations (T, d_t) (eq. 4)."""
        gate = self.g(tasks)
        weight = self.w0 + torch.einsum("ir,tr,jr->tij", self.u, gate, self.v)  # eq. 4
        return weight, self.b0 + self.h(tasks)  # eq. 4

    def forward(self, queries: Tensor, tasks: Tensor) -> Tensor:
        """queries (B, N, d), tasks (T, d_t) -> task-conditioned queries q_n(t) (B, T, N, d) (eq. 5).

        Computed in factored form, q W0 + ((q U) * g(t)) V^T + b_Q(t), never forming W_Q(t).
        """
        low_rank = torch.einsum("bnr,tr->btnr", queries @ self.u, self.g(tasks)) @ self.v.T
        bias = self.b0 + self.h(tasks)
        return (queries @ self.w0)[:, None] + low_rank + bias[None, :, None]  # eq. 5


class TokenRouter(nn.Module):
    """Token-wise soft routing over experts (eq. 6-7)."""

    def forward(self, queries: Tensor, experts: Tensor) -> tuple[Tensor, Tensor]:
        """Route expert tokens with task-conditioned queries.

        Args:
            queries: q_n(t), (B, T, N, d).
            experts: F'_{k,n}, (B, M, N, d).

        Returns:
            fused: f_n(t), (B, T, N, d).
            alpha: routing weights alpha_{k,n}(t), (B, T, M, N), summing to one over the M experts.
        """
        scores = torch.einsum("btnd,bmnd->btmn", queries, experts) / math.sqrt(queries.shape[-1])
        alpha = scores.softmax(dim=2)  # eq. 6
        fused = torch.einsum("btmn,bmnd->btnd", alpha, experts)  # eq. 7
        return fused, alpha
