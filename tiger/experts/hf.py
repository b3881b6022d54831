"""Experts over transformers vision models (DINOv2, OWLv2): the spec, the expert class and its builder.

A family module states only what is its own: an :class:`HfExpert` subclass (model and config classes,
normalisation, which tokens are the patch tokens) and its :class:`HfSpec` constants. The weights come from
a hub id, a ``save_pretrained`` folder, or a seeded random init.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor
from transformers import PretrainedConfig, PreTrainedModel
from transformers.utils import logging as hf_logging

from tiger.experts.base import (
    CONFIG_HINT,
    NO_OFFICIAL_WEIGHTS,
    Expert,
    ExpertWeightsError,
    hub_cache,
    local_weights,
    seeded,
    short_reason,
    tokens_to_map,
)

ARCHITECTURE_KEYS = (
    "hidden_size",
    "patch_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "mlp_ratio",
)
"""Config values that make an expert name's architecture: loaded weights must agree on each one the
expert's config has (width, patch, depth, heads, MLP width)."""


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bars (we check missing keys ourselves)."""
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def resolve_hf_source(weights: str | Path | None, default: str | None, expert: str) -> str | None:
    """``"default"`` -> the hub id (None for tiny), None -> None (random), else a local folder or hub id."""
    source = default if weights == "default" else weights
    if source is None:
        return None
    official = f"hub id {default}" if default is not None else NO_OFFICIAL_WEIGHTS
    path = local_weights(str(source), expert, official)
    return str(path) if path is not None else str(source)


def load_hf_model(
    model_class: type[PreTrainedModel],
    config: PretrainedConfig,
    source: str | None,
    *,
    expert: str,
    seed: int,
) -> PreTrainedModel:
    """Random init from ``config`` (source None) or ``from_pretrained(source)`` checked against ``config``.

    Args:
        model_class: e.g. ``Dinov2Model``.
        config: the architecture the expert name stands for; a loaded model must match each of its
            :data:`ARCHITECTURE_KEYS` (width, patch, depth, heads, MLP width).
        source: None, a hub id, or a local folder written by ``save_pretrained``.
        expert: expert name, for error messages.
        seed: seed of the random init.

    Raises:
        ExpertWeightsError: offline hub, missing folder, missing weights, or a different architecture.
    """
    if source is None:
        with seeded(seed):
            return model_class(config).eval()
    try:
        with quiet_transformers():
            model, info = model_class.from_pretrained(source, dtype=torch.float32, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as error:
        if Path(source).exists():
            raise ExpertWeightsError(
                f"weights for expert {expert!r}: {source!r} is not a save_pretrained folder of a "
                f"{model_class.__name__} ({short_reason(error, lines=3)})"
            ) from None
        raise ExpertWeightsError(
            f"weights for expert {expert!r} could not be loaded from {source!r} ({short_reason(error)}). "
            f"Download them on a machine with internet (`hf download {source}`, cached under "
            f"{hub_cache()}) {CONFIG_HINT}/to/save_pretrained_folder"
        ) from None
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise ExpertWeightsError(
            f"weights for expert {expert!r} from {source!r} lack {len(missing)} parameters of "
            f"{model_class.__name__}, e.g. {missing[:5]}"
        )
    differences = [
        f"{key}={getattr(model.config, key, None)}, expected {getattr(config, key)}"
        for key in ARCHITECTURE_KEYS
        if hasattr(config, key) and getattr(model.config, key, None) != getattr(config, key)
    ]
    if differences:
        raise ExpertWeightsError(
            f"weights for expert {expert!r} from {source!r} have {'; '.join(differences)}: pick the expert "
            "name that matches these weights"
        )
    return model.eval()


@dataclass(frozen=True)
class HfSpec:
    """One transformers expert: its registry name, default hub id (None = random init, tiny) and the values
    of its family's config class (``Dinov2Config``, ``Owlv2VisionConfig``)."""

    name: str
    default_weights: str | None
    config: dict[str, Any] = field(default_factory=dict)


class HfExpert(Expert):
    """A transformers vision model whose patch tokens are the features.

    A family subclass sets the class attributes and :meth:`patch_tokens`; the patch size and width come
    from the model's config (``patch_size``, ``hidden_size``).

    Attributes:
        model_class: the transformers model, e.g. ``Dinov2Model``.
        config_class: its config, built from :attr:`HfSpec.config`.
        image_mean, image_std: the per-channel normalisation the model was trained with (3 floats each).
    """

    model_class: ClassVar[type[PreTrainedModel]]
    config_class: ClassVar[type[PretrainedConfig]]
    image_mean: ClassVar[Sequence[float]]
    image_std: ClassVar[Sequence[float]]

    def __init__(self, model: PreTrainedModel, *, name: str, identity: dict) -> None:
        super().__init__(
            model,
            name=name,
            patch_size=model.config.patch_size,
            channels=model.config.hidden_size,
            mean=self.image_mean,
            std=self.image_std,
            identity=identity,
        )

    def patch_tokens(self, pixels: Tensor, grid: tuple[int, int]) -> Tensor:
        """Normalised images (B, 3, H p, W p) -> row-major patch tokens (B, H W, C), no CLS or registers."""
        raise NotImplementedError

    def extract(self, pixels: Tensor, grid: tuple[int, int]) -> Tensor:
        """Normalised images (B, 3, H p, W p) -> patch tokens (B, C, H, W)."""
        return tokens_to_map(self.patch_tokens(pixels, grid), grid)


_Expert = TypeVar("_Expert", bound=HfExpert)


def build_hf_expert(
    expert_class: type[_Expert], spec: HfSpec, weights: str | Path | None = "default", *, seed: int = 0
) -> _Expert:
    """Build a transformers expert.

    Args:
        expert_class: the family's :class:`HfExpert` subclass.
        spec: architecture and default hub id.
        weights: ``"default"`` (hub id; random for tiny), None (random init), a hub id, or a local folder
            written by ``save_pretrained``.
        seed: seed of the random init when no weights are loaded.

    Returns:
        The frozen expert; its ``identity`` keeps ``weights`` (a local folder resolved to its absolute path).

    Raises:
        ExpertWeightsError: offline hub, missing folder, missing weights, or a different architecture.
    """
    source = resolve_hf_source(weights, spec.default_weights, spec.name)
    config = expert_class.config_class(**spec.config)
    model = load_hf_model(expert_class.model_class, config, source, expert=spec.name, seed=seed)
    stored = source if source is not None and weights != "default" else weights
    return expert_class(model, name=spec.name, identity={"name": spec.name, "weights": stored, "seed": seed})
