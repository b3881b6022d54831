"""Loading transformers vision models (DINOv2, OWLv2): hub id, ``save_pretrained`` folder or random init."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import PretrainedConfig, PreTrainedModel
from transformers.utils import logging as hf_logging

from tiger.experts.base import (
    CONFIG_HINT,
    NO_OFFICIAL_WEIGHTS,
    ExpertWeightsError,
    hub_cache,
    local_weights,
    seeded,
    short_reason,
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
