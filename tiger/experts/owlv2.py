"""OWLv2 ViT experts through transformers ``Owlv2VisionModel`` (with ``interpolate_pos_encoding=True``).

The hub checkpoints hold the whole detector; ``Owlv2VisionModel.from_pretrained`` takes its vision tower.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor
from transformers import Owlv2VisionConfig, Owlv2VisionModel

from tiger.experts.base import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from tiger.experts.hf import HfExpert, HfSpec, build_hf_expert

OWLV2_L14 = HfSpec(
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
OWLV2_TINY = HfSpec(
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


class Owlv2Expert(HfExpert):
    """Patch tokens of the OWLv2 vision tower after its ``post_layernorm``, without the CLS token.

    These are the CLIP-style image tokens, not the detector's box features: ``Owlv2ForObjectDetection``
    (``image_embedder``) further multiplies each patch token by the class token and applies its own
    ``layer_norm``, whose weights live outside the vision tower. The position table is resized by
    transformers (``interpolate_pos_encoding=True``: plain bicubic, no antialiasing).
    """

    model_class = Owlv2VisionModel
    config_class = Owlv2VisionConfig
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD

    def patch_tokens(self, pixels: Tensor, grid: tuple[int, int]) -> Tensor:
        hidden = self.backbone(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
        return self.backbone.vision_model.post_layernorm(hidden[:, 1:])  # (B, H W, C)


def build_owlv2_expert(spec: HfSpec, weights: str | Path | None = "default", *, seed: int = 0) -> Owlv2Expert:
    """Build an OWLv2 expert: ``weights`` as :func:`~tiger.experts.hf.build_hf_expert` takes them, where a
    ``save_pretrained`` folder may hold an ``Owlv2VisionModel`` or a whole detector."""
    return build_hf_expert(Owlv2Expert, spec, weights, seed=seed)
