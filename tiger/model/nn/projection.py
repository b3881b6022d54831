"""Projection of each expert's features into the shared token space (eq. 2)."""

from __future__ import annotations

from einops import rearrange
from torch import Tensor, nn


class ExpertProjection(nn.Module):
    """F'_k = LayerNorm(FFN(F_k)) (eq. 2).

    Args:
        in_channels: C_k of the expert.
        dim: the shared width d.
        hidden: the FFN's hidden width (default 2 d).
    """

    def __init__(self, in_channels: int, dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or 2 * dim
        self.ffn = nn.Sequential(nn.Linear(in_channels, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, features: Tensor) -> Tensor:
        """features (B, C_k, H, W) -> tokens (B, N, d) with N = H W."""
        return self.norm(self.ffn(rearrange(features, "b c h w -> b (h w) c")))  # eq. 2
