"""Expert spec -> frozen expert: ``build_expert("dinov2_l14")``,
``build_expert("timm:vit_small_patch16_224")``, a name that a module of the user's registers with
:func:`register_expert` (``build_expert("my_net", module="my.pkg")``), or any callable, the Hydra way
(``build_expert(_target_="my.pkg.make_backbone", patch_size=16, ...)``, :mod:`tiger.experts.target`).

The built-in families are imported on first use, so importing :mod:`tiger.experts` does not load open_clip,
transformers, segment-anything and timm.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tiger.experts.base import TIMM_PREFIX, Expert
from tiger.experts.target import TARGET, instantiate_expert

# built-in name -> (module, spec constant, builder function); builders take (spec, weights, **options)
BUILTIN: dict[str, tuple[str, str, str]] = {
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
}

ExpertBuilder = Callable[..., Expert]
"""``builder(weights="default", **options) -> Expert``, registered with :func:`register_expert`."""
_REGISTERED: dict[str, ExpertBuilder] = {}
_Builder = TypeVar("_Builder", bound=ExpertBuilder)


def register_expert(builder: _Builder | None = None, *, name: str | None = None) -> _Builder:
    """Register an expert builder under its function name (or ``name``), like timm's ``@register_model``::

        @register_expert
        def my_backbone(weights: str | None = "default", **options) -> Expert: ...

    The builder takes ``weights`` and its own keyword options and returns a frozen :class:`Expert` whose
    ``identity`` rebuilds it (``{"name": ..., "weights": ..., **options}``). An expert of the user's module is
    then configured as ``{name: my_backbone, module: my.package.module}``: :func:`build_expert` imports the
    module (which registers the name) and keeps ``module`` in the identity, so a checkpoint rebuilds it.

    Raises:
        ValueError: the name is a built-in expert or already registered by another builder.
    """

    def register(function: _Builder) -> _Builder:
        key = name or function.__name__
        if key in BUILTIN or key.startswith(TIMM_PREFIX):
            raise ValueError(f"expert name {key!r} is a built-in expert; register yours under another name")
        known = _REGISTERED.get(key)
        if known is not None and _qualified(known) != _qualified(function):
            raise ValueError(f"expert name {key!r} is already registered by {_qualified(known)}")
        _REGISTERED[key] = function
        return function

    return register(builder) if builder is not None else register  # type: ignore[return-value]


def _qualified(builder: Callable) -> str:
    """The builder's dotted name (a ``functools.partial`` with its arguments): two registrations of the same
    builder (a module imported twice) are one."""
    function = getattr(builder, "func", builder)
    name = f"{function.__module__}.{function.__qualname__}"
    arguments = getattr(builder, "args", ())
    return f"{name}{arguments!r}" if arguments else name


def known_experts() -> list[str]:
    """Registered expert names: the built-in ones and those registered so far (any ``timm:<model_name>``
    works as well)."""
    return [*BUILTIN, *_REGISTERED]


def build_expert(name: str | None = None, **spec: Any) -> Expert:
    """Build a frozen expert from its spec; ``build_expert(**expert.identity)`` rebuilds an expert.

    A spec with ``_target_`` is built by :func:`tiger.experts.target.instantiate_expert` (any callable that
    returns an expert or a plain feature-extractor module); any other spec names its expert:

    Args:
        name: one of :func:`known_experts`, ``timm:<model_name>``, or a name registered by ``module``.
        weights: ``"default"`` (official pretrained weights; random for the ``*_tiny`` experts), None
            (random init of the architecture), or a local folder / checkpoint file in the library's format
            (a hub id or open_clip tag also works for the transformers and open_clip families).
        module: a module to import first, which registers ``name`` with :func:`register_expert` (kept in
            the expert's ``identity``).
        **options: family options: ``seed`` (random init, all), ``neck`` (SAM: 256-channel neck output or
            the ViT width), ``pos_embed_antialias`` (CLIP, SAM: antialiased bicubic resizing of the position
            table, default True), ``norm`` and ``model_kwargs`` (timm: final norm, ``timm.create_model``
            args); a registered builder's own options.

    Raises:
        ValueError: unknown name.
        ModuleNotFoundError: the spec's ``module`` or the module of its ``_target_`` cannot be imported
            (naming it).
        ExpertWeightsError: weights unavailable (offline hub, missing or unsuitable file).
    """
    if TARGET in spec:
        return instantiate_expert(name=name, **spec)
    if name is None:
        raise TypeError(f"an expert spec needs a 'name' or a '{TARGET}', got {spec!r}")
    return _build_named_expert(name, **spec)


def _build_named_expert(
    name: str, weights: str | Path | None = "default", module: str | None = None, **options
) -> Expert:
    if module is not None:
        _import_registering_module(module, name)
    if name.startswith(TIMM_PREFIX):
        from tiger.experts.timm_expert import build_timm_expert

        expert = build_timm_expert(name[len(TIMM_PREFIX) :], weights, **options)
    elif name in _REGISTERED:
        expert = _REGISTERED[name](weights=weights, **options)
        if not isinstance(expert, Expert):
            raise TypeError(
                f"the builder of expert {name!r} ({_qualified(_REGISTERED[name])}) returned a "
                f"{type(expert).__name__}, not a tiger.experts.Expert"
            )
    elif name in BUILTIN:
        module_name, spec_name, builder_name = BUILTIN[name]
        family = importlib.import_module(module_name)
        expert = getattr(family, builder_name)(getattr(family, spec_name), weights, **options)
    else:
        hint = (
            ""
            if module
            else ("; an expert of your own module needs experts.<role>.module=<the module>, or a _target_")
        )
        raise ValueError(
            f"unknown expert {name!r}; known experts: {known_experts()} or 'timm:<model_name>'{hint}"
        )
    if module is not None:
        expert.identity["module"] = module
    return expert


def _import_registering_module(module: str, name: str) -> None:
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            f"expert {name!r} is registered by module {module!r}, which cannot be imported ({error}); "
            "install it or put the folder that holds it on PYTHONPATH",
            name=module,
        ) from error
