"""DINOv2 ViT experts through transformers ``Dinov2Model`` (it interpolates its position embedding itself)."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor
from transformers import Dinov2Config, Dinov2Model

from tiger.experts.base import IMAGENET_MEAN, IMAGENET_STD
from tiger.experts.hf import HfExpert, HfSpec, build_hf_expert

DINOV2_B14 = HfSpec(
    "dinov2_b14",
    "facebook/dinov2-base",
    {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "image_size": 518},
)
DINOV2_L14 = HfSpec(
    "dinov2_l14",
    "facebook/dinov2-large",
    {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 518},
)
DINOV2_TINY = HfSpec(
    "dinov2_tiny",
    None,
    {"hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 224},
)


class Dinov2Expert(HfExpert):
    """Patch tokens of ``Dinov2Model.last_hidden_state`` (after its final layernorm) without CLS or registers.

    HF DINOv2 interpolates its position embedding to any grid by itself: plain bicubic (no antialiasing)
    from its table (37x37 at 518 pixels) straight to (H, W), in float32, skipped only at a square native grid.
    """

    model_class = Dinov2Model
    config_class = Dinov2Config
    image_mean = IMAGENET_MEAN
    image_std = IMAGENET_STD

    def patch_tokens(self, pixels: Tensor, grid: tuple[int, int]) -> Tensor:
        hidden = self.backbone(pixel_values=pixels).last_hidden_state  # (B, 1 + R + H W, C)
        return hidden[:, -grid[0] * grid[1] :]


def build_dinov2_expert(
    spec: HfSpec, weights: str | Path | None = "default", *, seed: int = 0
) -> Dinov2Expert:
    """Build a DINOv2 expert: ``weights`` as :func:`~tiger.experts.hf.build_hf_expert` takes them."""
    return build_hf_expert(Dinov2Expert, spec, weights, seed=seed)
