"""The conventions every target and prediction shares (the bottom of the package: torch only).

``IGNORE_INDEX`` marks an ignored pixel of a label map; :func:`unit_vectors` normalises normals. The task
entries (:mod:`tiger.tasks`), the losses and the metrics all use these two.
"""

from __future__ import annotations

import torch
from torch import Tensor

IGNORE_INDEX = 255


def unit_vectors(vectors: Tensor, eps: float = 1e-12) -> Tensor:
    """``vectors`` (B, C, H, W) scaled to unit length along C: ``F.normalize(vectors, dim=1)``, same values
    and gradients, written out because ``F.normalize`` over the channel dim is ~50x slower on CPU."""
    return vectors * torch.rsqrt(vectors.square().sum(1, keepdim=True).clamp_min(eps * eps))
