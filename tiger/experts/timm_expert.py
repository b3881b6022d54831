"""Any timm model with ``forward_intermediates`` as an expert, by name alone (``timm:<model_name>``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor, nn

from tiger.experts.base import (
    CONFIG_HINT,
    TIMM_PREFIX,
    Expert,
    ExpertWeightsError,
    existing_path,
    find_weights_file,
    seeded,
    short_reason,
)

CHECKPOINT_NAMES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


class TimmExpert(Expert):
    """Feature map of a timm model's last block (``forward_intermediates(indices=1)``), optionally normed.

    Patch size is the model's total stride (``feature_info[-1]["reduction"]``); ViTs are built with
    ``dynamic_img_size=True`` so their position embedding is resampled to any grid.
    """

    def __init__(self, model: nn.Module, *, name: str, identity: dict, norm: bool = True) -> None:
        if not hasattr(model, "forward_intermediates"):
            raise ValueError(f"timm model {name!r} has no forward_intermediates and cannot be an expert")
        last = model.feature_info[-1]
        if hasattr(model, "prune_intermediate_layers"):
            model.prune_intermediate_layers(indices=1, prune_norm=not norm, prune_head=True)
        config = getattr(model, "pretrained_cfg", None) or {}
        super().__init__(
            model,
            name=name,
            patch_size=last["reduction"],
            channels=last["num_chs"],
            mean=config.get("mean", IMAGENET_DEFAULT_MEAN),
            std=config.get("std", IMAGENET_DEFAULT_STD),
            identity=identity,
        )
        self.norm = norm

    def extract(self, pixels: Tensor, grid: tuple[int, int]) -> Tensor:
        (features,) = self.backbone.forward_intermediates(
            pixels, indices=1, norm=self.norm, intermediates_only=True, output_fmt="NCHW"
        )
        return features


def create_timm_model(
    model_name: str, *, pretrained: bool, file: str | None, model_kwargs: Mapping[str, Any] | None = None
) -> nn.Module:
    """``timm.create_model`` without a classifier, with ``dynamic_img_size`` where the model accepts it."""
    kwargs: dict[str, Any] = {**(model_kwargs or {}), "pretrained": pretrained, "num_classes": 0}
    if file is not None:
        kwargs["pretrained_cfg_overlay"] = {"file": file}
    try:
        return timm.create_model(model_name, dynamic_img_size=True, **kwargs)
    except TypeError as error:
        if "dynamic_img_size" not in str(error):
            raise
        return timm.create_model(model_name, **kwargs)


def build_timm_expert(
    model_name: str,
    weights: str | Path | None = "default",
    *,
    seed: int = 0,
    norm: bool = True,
    model_kwargs: Mapping[str, Any] | None = None,
) -> TimmExpert:
    """Build ``timm:<model_name>``.

    Args:
        model_name: a timm model name, maybe with a pretrained tag (``vit_small_patch16_224.augreg_in21k``).
        weights: ``"default"`` (timm's pretrained weights from the hub), None (random init), or a local
            timm checkpoint file (or a folder holding ``model.safetensors`` / ``pytorch_model.bin``).
        seed: seed of the random init when no weights are loaded.
        norm: apply the model's final norm to the last block's tokens.
        model_kwargs: further ``timm.create_model`` arguments (e.g. ``{"depth": 2}`` for a small test model).
    """
    name = TIMM_PREFIX + model_name
    if not timm.is_model(model_name):
        raise ValueError(
            f"unknown timm model {model_name!r} in expert name {name!r} (see timm.list_models())"
        )
    file = None
    stored = weights
    if weights not in ("default", None):
        path = existing_path(str(weights), name, f"timm.create_model({model_name!r}, pretrained=True)")
        file = str(find_weights_file(path, CHECKPOINT_NAMES, name) if path.is_dir() else path)
        stored = str(path)
    elif weights == "default" and not timm.is_model_pretrained(model_name):
        raise ExpertWeightsError(f"timm has no pretrained weights for {model_name!r}; {CONFIG_HINT}")
    try:
        with seeded(seed):
            model = create_timm_model(
                model_name, pretrained=weights is not None, file=file, model_kwargs=model_kwargs
            )
    except (OSError, RuntimeError) as error:
        if weights is None:
            raise
        if file is not None:
            raise ExpertWeightsError(
                f"weights for expert {name!r}: {file!r} is not a checkpoint of timm model {model_name!r} "
                f"({short_reason(error, lines=3)})"
            ) from None
        raise ExpertWeightsError(
            f"weights for expert {name!r} could not be loaded from the Hugging Face hub "
            f"({short_reason(error)}). Download "
            f"them on a machine with internet with timm.create_model({model_name!r}, pretrained=True) "
            f"{CONFIG_HINT}/model.safetensors"
        ) from None
    identity = {"name": name, "weights": stored, "seed": seed, "norm": norm}
    if model_kwargs:
        identity["model_kwargs"] = dict(model_kwargs)
    return TimmExpert(model.eval(), name=name, identity=identity, norm=norm)
