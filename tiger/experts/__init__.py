"""Frozen vision-foundation-model experts behind one interface: (images, grid) -> (B, C_k, H, W)."""

from tiger.experts.base import Expert, ExpertWeightsError, ModuleExpert
from tiger.experts.registry import build_expert, known_experts, register_expert

__all__ = ["Expert", "ExpertWeightsError", "ModuleExpert", "build_expert", "known_experts", "register_expert"]
