"""An expert from any callable, the Hydra way: a spec with ``_target_`` (``hydra.utils.instantiate``).

The callable returns either a frozen :class:`~tiger.experts.Expert`, or a plain ``nn.Module`` feature
extractor that maps normalised images (B, 3, H p, W p) to a feature map (B, C, H, W) at total stride p; the
spec then gives its ``patch_size`` (p), ``channels`` (C) and normalisation (``mean``, ``std``), and TIGER
wraps and freezes it (:class:`~tiger.experts.ModuleExpert`). For example timm's ResNet-18 at random
weights, its last stage (stride 32, 512 channels)::

    {_target_: timm.create_model, model_name: resnet18, pretrained: false, features_only: true,
     out_indices: [4], patch_size: 32, channels: 512, mean: [0.485, 0.456, 0.406],
     std: [0.229, 0.224, 0.225]}

The spec itself is the expert's ``identity`` (plain data, stored in checkpoints): rebuilding runs the same
callable with the same arguments under the same ``seed``, so an expert at random weights comes back equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import hydra
from hydra.errors import InstantiationException
from torch import nn

from tiger import options
from tiger.experts.base import Expert, ModuleExpert, seeded

TARGET = "_target_"
WRAPPING = ("patch_size", "channels", "mean", "std")
"""The keys that turn a plain module into an expert; every other key is an argument of the callable."""


def instantiate_expert(
    *,
    name: str | None = None,
    seed: int = 0,
    patch_size: int | None = None,
    channels: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **config: Any,
) -> Expert:
    """Build the expert of a ``_target_`` spec.

    Args:
        name: the expert's name in tables, logs and figures (default: the callable's name; an expert of
            the model config is named by its role unless set).
        seed: torch's CPU seed while the callable runs, so random weights are the same at every rebuild.
        patch_size, channels, mean, std: required when the callable returns a plain module: its output
            stride in pixels, its output channels and the per-channel mean / std (3 each, on [0, 1] RGB)
            it expects; refused when it returns an :class:`Expert`, which has its own.
        **config: ``_target_`` (a dotted path to any callable) and its arguments, nested ``_target_``
            nodes included (instantiated by Hydra).

    Raises:
        ModuleNotFoundError: the module of ``_target_`` cannot be imported (naming it).
        tiger.options.OptionError: a missing or bad wrapping key (named by its key).
        TypeError: the callable returned neither an ``Expert`` nor an ``nn.Module``.
    """
    target = config.get(TARGET)
    if not isinstance(target, str) or "." not in target:
        raise options.OptionError(TARGET, f"must be the dotted path of a callable, got {target!r}")
    name = name or target.rsplit(".", 1)[-1]
    options.integer(seed, "seed")
    wrapping = {"patch_size": patch_size, "channels": channels, "mean": mean, "std": std}
    try:
        with seeded(seed):
            built = hydra.utils.instantiate(config, _convert_="all")
    except InstantiationException as error:
        missing = _missing_module(error)
        if missing is None:
            raise
        raise ModuleNotFoundError(
            f"expert {name!r} is built by {target!r}, but module {missing.name!r} cannot be imported "
            f"({str(missing.__context__ or missing).strip().splitlines()[-1]}); install the package that "
            "provides it or put the folder that holds it on PYTHONPATH",
            name=missing.name,
        ) from None
    identity = {**config, "name": name, "seed": seed}
    if isinstance(built, Expert):
        given = [key for key, value in wrapping.items() if value is not None]
        if given:
            raise options.OptionError(
                given[0],
                f"is not used: {target} returns a tiger.experts.Expert, which has its own patch size, "
                "channels and normalisation; remove it",
            )
        built.name, built.identity = name, identity
        return built
    if not isinstance(built, nn.Module):
        raise TypeError(
            f"expert {name!r}: {target} returned a {type(built).__name__}, not a tiger.experts.Expert or a "
            "torch.nn.Module feature extractor"
        )
    missing = [key for key, value in wrapping.items() if value is None]
    if missing:
        raise options.OptionError(
            missing[0],
            f"is required: {target} returns a plain {type(built).__name__}, which TIGER wraps as an expert "
            f"given its {', '.join(WRAPPING)} (missing: {', '.join(missing)})",
        )
    patch_size = options.integer(patch_size, "patch_size", minimum=1)
    channels = options.integer(channels, "channels", minimum=1)
    mean, std = _rgb(mean, "mean"), _rgb(std, "std", positive=True)
    identity.update(patch_size=patch_size, channels=channels, mean=mean, std=std)
    return ModuleExpert(
        built, name=name, patch_size=patch_size, channels=channels, mean=mean, std=std, identity=identity
    )


def _rgb(values: Any, key: str, positive: bool = False) -> list[float]:
    """Three numbers, one per RGB channel (each > 0 when ``positive``)."""
    if isinstance(values, str) or not isinstance(values, Sequence) or len(values) != 3:
        raise options.OptionError(key, f"must be 3 numbers (one per RGB channel), got {values!r}")
    minimum = 0.0 if positive else None
    return [options.real(value, key, minimum=minimum, exclusive=positive) for value in values]


def _missing_module(error: BaseException) -> ModuleNotFoundError | None:
    """The module that could not be imported, somewhere in the causes of ``error``."""
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, ModuleNotFoundError):
        cause = cause.__cause__
    return cause
