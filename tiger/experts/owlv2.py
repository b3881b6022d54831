"""OWLv2 ViT experts through transformers ``Owlv2VisionModel`` (with ``interpolate_pos_encoding=True``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor
from transformers import Owlv2VisionConfig, Owlv2VisionModel

from tiger.experts.base import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Expert, tokens_to_map
from tiger.experts.hf import load_hf_model, resolve_hf_source


@dataclass(frozen=True)
class Owlv2Spec:
    """One OWLv2 expert: its ``Owlv2VisionConfig`` values and default hub id (None = random init, tiny).

    The hub checkpoints hold the whole detector; ``Owlv2VisionModel.from_pretrained`` takes its vision tower.
    """

    name: str
    default_weights: str | None
    config: dict[str, Any] = field(default_factory=dict)


OWLV2_L14 = Owlv2Spec(
    "owlv2_l14",
    "google/owlv2-large-patch14-ensemble",
    {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "image_size": 960,
        "patch_size": 14,
    },
)
OWLV2_TINY = Owlv2Spec(
    "owlv2_tiny",
    None,
    {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 224,
        "patch_size": 14,
    },
)


class Owlv2Expert(Expert):
    """Patch tokens of the OWLv2 vision tower after its ``post_layernorm``, without the CLS token.

    These are the CLIP-style image tokens, not the detector's box features: ``Owlv2ForObjectDetection``
    (``image_embedder``) further multiplies each patch token by the class token and applies its own
    ``layer_norm``, whose weights live outside the vision tower. The position table is resized by
    transformers (``interpolate_pos_encoding=True``: plain bicubic, no antialiasing).
    """

    def __init__(self, model: Owlv2VisionModel, *, name: str, identity: dict) -> None:
        super().__init__(
            model,
            name=name,
            patch_size=model.config.patch_size,
            channels=model.config.hidden_size,
            mean=OPENAI_CLIP_MEAN,
            std=OPENAI_CLIP_STD,
            identity=identity,
        )

    def extract(self, pixels: Tensor, grid: tuple[int, int]) -> Tensor:
        hidden = self.backbone(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
        tokens = self.backbone.vision_model.post_layernorm(hidden[:, 1:])
        return tokens_to_map(tokens, grid)


def build_owlv2_expert(
    spec: Owlv2Spec, weights: str | Path | None = "default", *, seed: int = 0
) -> Owlv2Expert:
    """Build an OWLv2 expert.

    Args:
        spec: architecture and default hub id.
        weights: ``"default"`` (hub id; random for tiny), None (random init), a hub id, or a local folder
            written by ``save_pretrained`` (of an ``Owlv2VisionModel`` or a whole detector).
        seed: seed of the random init when no weights are loaded.
    """
    source = resolve_hf_source(weights, spec.default_weights, spec.name)
    model = load_hf_model(
        Owlv2VisionModel, Owlv2VisionConfig(**spec.config), source, expert=spec.name, seed=seed
    )
    stored = source if source is not None and weights != "default" else weights
    return Owlv2Expert(model, name=spec.name, identity={"name": spec.name, "weights": stored, "seed": seed})
