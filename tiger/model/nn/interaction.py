"""Expert- and task-interactive attention (Sec. 3.4)."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn


class SetAttention(nn.Module):
    """Multi-head self-attention among the members of a set at each token position.

    Used twice: among the M experts before routing (expert interaction) and among the T tasks after
    routing (task interaction). Each member gets a learnable identity embedding, so the attention knows
    which expert or task a token came from.

    Args:
        num_members: M (experts) or T (tasks).
        dim: token width d.
        num_heads: attention heads.
        num_layers: pre-norm transformer layers.
        mlp_ratio: the layers' MLP width as a multiple of d.
    """

    def __init__(
        self, num_members: int, dim: int, num_heads: int = 8, num_layers: int = 1, mlp_ratio: float = 4.0
    ) -> None:
        super().__init__()
        self.identity = nn.Parameter(nn.init.trunc_normal_(torch.empty(num_members, dim), std=0.02))
        layer = nn.TransformerEncoderLayer(
            dim,
            num_heads,
            dim_feedforward=int(dim * mlp_ratio),
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.layers = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens (B, S, N, d) -> (B, S, N, d), S members attending to each other at each of N positions."""
        batch = tokens.shape[0]
        sets = rearrange(tokens + self.identity[None, :, None], "b s n d -> (b n) s d")
        return rearrange(self.layers(sets), "(b n) s d -> b s n d", b=batch)
