"""Build a TIGER model from plain configuration (what Hydra passes and what a checkpoint stores)."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch import Tensor

from tiger import options
from tiger.instructions import DEFAULT_ENCODER, encode_instructions
from tiger.model import TIGER, check_options
from tiger.tasks import TASKS, make_task


def expert_specs(
    experts: Mapping[str, Mapping[str, Any]] | Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """Experts as configured (a mapping role -> spec, or a list of specs) -> a list of specs."""
    specs = list(experts.values()) if isinstance(experts, Mapping) else list(experts)
    for spec in specs:
        if "name" not in spec:
            raise ValueError(f"every expert needs a 'name', got {dict(spec)}")
    return [dict(spec) for spec in specs]


def build_tiger(
    experts: Mapping[str, Mapping[str, Any]] | Sequence[Mapping[str, Any]],
    tasks: Sequence[str],
    grid: Sequence[int],
    num_semseg_classes: int | None = None,
    task_weights: Mapping[str, float] | None = None,
    instructions: Mapping[str, Any] | None = None,
    instruction_embeddings: Tensor | None = None,
    **model_options: Any,
) -> TIGER:
    """Build TIGER with its frozen experts and task instructions.

    Args:
        experts: expert specs, each ``{name, weights, **options}`` for :func:`tiger.experts.build_expert`.
        tasks: task names in output order.
        grid: the token grid (H, W).
        num_semseg_classes: classes of ``semseg`` (NYUD 40, PASCAL 21).
        task_weights: lambda_j per task (eq. 14), finite and >= 0; 1 where absent; weights of unselected
            tasks are unused.
        instructions: ``{"encoder": name or path or None, "texts": {task: sentence}}``; encoder None means
            learnable task embeddings only (Table 4).
        instruction_embeddings: precomputed t0 (T, d_t), skipping the text encoder (used when loading a
            checkpoint, whose buffers hold the real embeddings).
        model_options: keyword options of :class:`tiger.model.TIGER`.
    """
    from tiger.experts import build_expert

    instructions = dict(instructions or {})
    texts = dict(instructions.get("texts") or {})
    weights = dict(task_weights or {})
    unknown = sorted((set(texts) | set(weights)) - set(TASKS))
    if unknown:
        raise ValueError(f"instructions or weights given for unknown tasks {unknown}; known: {list(TASKS)}")
    for name, weight in weights.items():
        options.real(weight, f"task_weights.{name}", minimum=0.0)
    if "semseg" in tasks:
        options.integer(num_semseg_classes, "num_semseg_classes", minimum=2)
    # every option of TIGER is checked before the experts are built (an unknown one is a TypeError)
    bound = inspect.signature(TIGER).bind([], [], grid, None, **model_options)
    bound.apply_defaults()
    check_options(grid, **{k: v for k, v in bound.arguments.items() if k not in _POSITIONAL})
    task_list = [
        make_task(
            name, num_classes=num_semseg_classes, instruction=texts.get(name), weight=weights.get(name, 1.0)
        )
        for name in tasks
    ]
    encoder = instructions.get("encoder", DEFAULT_ENCODER)
    if instruction_embeddings is None and encoder is not None:
        instruction_embeddings = encode_instructions([task.instruction for task in task_list], encoder)
    built = []
    roles = experts.keys() if isinstance(experts, Mapping) else range(len(experts))
    for role, spec in zip(roles, expert_specs(experts), strict=True):
        with options.option_prefix(f"experts.{role}"):
            built.append(build_expert(**spec))
    return TIGER(built, task_list, grid, instruction_embeddings, **model_options)


_POSITIONAL = ("experts", "tasks", "grid", "instruction_embeddings")


def plain_config(value: Any) -> Any:
    """DictConfig / ListConfig / tuples -> plain dicts and lists (loadable with ``weights_only=True``)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, DictConfig | ListConfig):
            value = OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, Mapping):
        return {str(k): plain_config(v) for k, v in value.items()}
    if isinstance(value, Iterable) and not isinstance(value, str | bytes):
        return [plain_config(v) for v in value]
    return value
