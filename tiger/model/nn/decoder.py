"""The shared lightweight decoder and the per-task heads."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from tiger.tasks import Task


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 convolution, GroupNorm, GELU (GroupNorm: batch statistics would mix tasks and images)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.GroupNorm(min(32, out_channels // 4), out_channels),
        nn.GELU(),
    )


class SharedDecoder(nn.Module):
    """Token maps of every task -> higher-resolution feature maps, with weights shared across tasks.

    A 3x3 block at the token grid, then ``num_upsamples`` stages of (2x bilinear upsampling, 3x3 block),
    each halving the channels.

    Args:
        dim: token width d.
        width: channels after the first block.
        num_upsamples: number of 2x stages.
    """

    def __init__(self, dim: int, width: int = 256, num_upsamples: int = 2) -> None:
        super().__init__()
        self.stem = conv_block(dim, width)
        stages, channels = [], width
        for _ in range(num_upsamples):
            stages.append(conv_block(channels, channels // 2))
            channels //= 2
        self.stages = nn.ModuleList(stages)
        self.out_channels = channels

    def forward(self, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        """tokens (B, T, N, d) -> features (B, T, C, H * 2^s, W * 2^s)."""
        batch = tokens.shape[0]
        x = self.stem(rearrange(tokens, "b t (h w) d -> (b t) d h w", h=grid[0], w=grid[1]))
        for stage in self.stages:
            x = stage(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))
        return rearrange(x, "(b t) c h w -> b t c h w", b=batch)


class TaskHeads(nn.Module):
    """One head per task (3x3 block, 1x1 to the task's channels), upsampled to the input size."""

    def __init__(self, tasks: Sequence[Task], in_channels: int) -> None:
        super().__init__()
        self.names = [task.name for task in tasks]
        self.heads = nn.ModuleDict(
            {
                task.name: nn.Sequential(
                    conv_block(in_channels, in_channels), nn.Conv2d(in_channels, task.channels, 1)
                )
                for task in tasks
            }
        )

    def forward(self, features: Tensor, size: tuple[int, int]) -> dict[str, Tensor]:
        """features (B, T, C, h, w) -> {task: logits (B, C_task, H0, W0)}."""
        return {
            name: F.interpolate(
                self.heads[name](features[:, index]), size=size, mode="bilinear", align_corners=False
            )
            for index, name in enumerate(self.names)
        }
