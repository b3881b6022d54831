"""Name -> builder: ``build_expert("dinov2_l14")``, ``build_expert("timm:vit_small_patch16_224")``.

Family modules are imported on first use, so importing :mod:`tiger.experts` does not load
open_clip, transformers, segment-anything and timm.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from tiger.experts.base import TIMM_PREFIX, Expert

# name -> (module, spec constant, builder function); builders take (spec, weights, **options)
EXPERTS: dict[str, tuple[str, str, str]] = {
    "clip_b16": ("tiger.experts.clip", "CLIP_B16", "build_clip_expert"),
    "clip_l14": ("tiger.experts.clip", "CLIP_L14", "build_clip_expert"),
    "dinov2_b14": ("tiger.experts.dinov2", "DINOV2_B14", "build_dinov2_expert"),
    "dinov2_l14": ("tiger.experts.dinov2", "DINOV2_L14", "build_dinov2_expert"),
    "sam_b": ("tiger.experts.sam", "SAM_B", "build_sam_expert"),
    "owlv2_l14": ("tiger.experts.owlv2", "OWLV2_L14", "build_owlv2_expert"),
    "clip_tiny": ("tiger.experts.clip", "CLIP_TINY", "build_clip_expert"),
    "dinov2_tiny": ("tiger.experts.dinov2", "DINOV2_TINY", "build_dinov2_expert"),
    "sam_tiny": ("tiger.experts.sam", "SAM_TINY", "build_sam_expert"),
    "owlv2_tiny": ("tiger.experts.owlv2", "OWLV2_TINY", "build_owlv2_expert"),
    # the known-answer study's experts (tiger.experts.study)
    "study_semantics": ("tiger.experts.study", "STUDY_SEMANTICS", "build_study_expert"),
    "study_geometry": ("tiger.experts.study", "STUDY_GEOMETRY", "build_study_expert"),
    "study_boundary": ("tiger.experts.study", "STUDY_BOUNDARY", "build_study_expert"),
    "study_noise": ("tiger.experts.study", "STUDY_NOISE", "build_study_expert"),
    "study_loud": ("tiger.experts.study", "STUDY_LOUD", "build_study_expert"),
}


def known_experts() -> list[str]:
    """Registered expert names (any ``timm:<model_name>`` works as well)."""
    return list(EXPERTS)


def build_expert(name: str, weights: str | Path | None = "default", **options) -> Expert:
    """Build a frozen expert by name.

    Args:
        name: one of :func:`known_experts` or ``timm:<model_name>``.
        weights: ``"default"`` (official pretrained weights; random for the ``*_tiny`` experts), None
            (random init of the architecture), or a local folder / checkpoint file in the library's format
            (a hub id or open_clip tag also works for the transformers and open_clip families).
        **options: family options: ``seed`` (random init, all), ``neck`` (SAM: 256-channel neck output or
            the ViT width), ``pos_embed_antialias`` (CLIP, SAM: antialiased bicubic resizing of the position
            table, default True), ``norm`` and ``model_kwargs`` (timm: final norm, ``timm.create_model``
            args).

    ``build_expert(**expert.identity)`` rebuilds an expert.

    Raises:
        ValueError: unknown name.
        ExpertWeightsError: weights unavailable (offline hub, missing or unsuitable file).
    """
    if name.startswith(TIMM_PREFIX):
        from tiger.experts.timm_expert import build_timm_expert

        return build_timm_expert(name[len(TIMM_PREFIX) :], weights, **options)
    if name not in EXPERTS:
        raise ValueError(f"unknown expert {name!r}; known experts: {known_experts()} or 'timm:<model_name>'")
    module_name, spec_name, builder_name = EXPERTS[name]
    module = importlib.import_module(module_name)
    return getattr(module, builder_name)(getattr(module, spec_name), weights, **options)
