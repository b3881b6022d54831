"""DINOv2 ViT experts through transformers ``Dinov2Model`` (it interpolates its position embedding itself)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor
from transformers import Dinov2Config, Dinov2Model

from tiger.experts.base import IMAGENET_MEAN, IMAGENET_STD, Expert, tokens_to_map
from tiger.experts.hf import load_hf_model, resolve_hf_source


@dataclass(frozen=True)
class Dinov2Spec:
    """One DINOv2 expert: its ``Dinov2Config`` values and default hub id (None = random init, tiny)."""

    name: str
    default_weights: str | None
    config: dict[str, Any] = field(default_factory=dict)


DINOV2_B14 = Dinov2Spec(
    "dinov2_b14",
    "facebook/dinov2-base",
    {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "image_size": 518},
)
DINOV2_L14 = Dinov2Spec(
    "dinov2_l14",
    "facebook/dinov2-large",
    {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 518},
)
DINOV2_TINY = Dinov2Spec(
    "dinov2_tiny",
    None,
    {"hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 224},
)


class Dinov2Expert(Expert):
    """Patch tokens of ``Dinov2Model.last_hidden_state`` (after its final layernorm) without CLS or registers.

    HF DINOv2 interpolates its position embedding to any grid by itself: plain bicubic (no antialiasing)
    from its table (37x37 at 518 pixels) straight to (H, W), in float32, skipped only at a square native grid.
    """

    def __init__(self, model: Dinov2Model, *, name: str, identity: dict) -> None:
        super().__init__(
            model,
            name=name,
            patch_size=model.config.patch_size,
            channels=model.config.hidden_size,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            identity=identity,
        )

    def extract(self, pixels: Tensor, grid: tuple[int, int]) -> Tensor:
        hidden = self.backbone(pixel_values=pixels).last_hidden_state  # (B, 1 + R + H W, C)
        return tokens_to_map(hidden[:, -grid[0] * grid[1] :], grid)


def build_dinov2_expert(
    spec: Dinov2Spec, weights: str | Path | None = "default", *, seed: int = 0
) -> Dinov2Expert:
    """Build a DINOv2 expert.

    Args:
        spec: architecture and default hub id.
        weights: ``"default"`` (hub id; random for tiny), None (random init), a hub id, or a local folder
            written by ``save_pretrained``.
        seed: seed of the random init when no weights are loaded.
    """
    source = resolve_hf_source(weights, spec.default_weights, spec.name)
    model = load_hf_model(Dinov2Model, Dinov2Config(**spec.config), source, expert=spec.name, seed=seed)
    stored = source if source is not None and weights != "default" else weights
    return Dinov2Expert(model, name=spec.name, identity={"name": spec.name, "weights": stored, "seed": seed})
