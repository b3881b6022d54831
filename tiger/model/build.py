"""Build TIGER: from its config (training), or from a checkpoint (inference, evaluation)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from tiger import options
from tiger.experts import ExpertWeightsError, build_expert
from tiger.experts.target import TARGET
from tiger.model import checkpoint
from tiger.model.config import TigerConfig
from tiger.model.instructions import encode_instructions
from tiger.model.tiger import TIGER
from tiger.tasks import make_task


def build_tiger(config: TigerConfig, instruction_embeddings: Tensor | None = None) -> TIGER:
    """TIGER with its frozen experts and task instructions.

    Args:
        config: what to build (checked when it was constructed).
        instruction_embeddings: precomputed t0 (T, d_t), skipping the text encoder (a checkpoint's buffers
            hold the real embeddings); computed from the config's instructions when None and the config
            has an encoder.

    Raises:
        tiger.options.OptionError: an expert option out of range, named ``experts.<role>.<option>``.
        tiger.experts.ExpertWeightsError: an expert's weights cannot be found.
        ModuleNotFoundError: the module an expert comes from cannot be imported (naming it and the role).
    """
    tasks = [
        make_task(
            name,
            num_classes=config.num_semseg_classes,
            instruction=text,
            weight=config.task_weights.get(name, 1.0),
        )
        for name, text in zip(config.tasks, config.instruction_texts(), strict=True)
    ]
    if instruction_embeddings is None and config.instruction_encoder is not None:
        instruction_embeddings = encode_instructions(
            [task.instruction for task in tasks], config.instruction_encoder
        )
    experts = []
    for role, spec in config.experts.items():
        with options.option_prefix(f"experts.{role}"):
            try:
                experts.append(build_expert(**spec))
            except ModuleNotFoundError as error:
                raise ModuleNotFoundError(f"expert role {role!r}: {error}", name=error.name) from error
    return TIGER(experts, tasks, config, instruction_embeddings)


def tiger_from_checkpoint(
    saved: Mapping[str, Any],
    source: str | Path,
    expert_weights: Mapping[str, str | Path | None] | None = None,
) -> TIGER:
    """The trained TIGER of a :func:`~tiger.model.checkpoint.read_checkpoint` result (not in eval mode).

    The experts come from their stored identities (``expert_weights``: per role, a local file or folder, a
    hub id, or None for a random init, instead of the stored weights), the instructions from the stored
    embeddings (no text encoder), the trained weights from the state dict (strict).

    Raises:
        tiger.model.checkpoint.CheckpointError: an unknown role in ``expert_weights``; a stored config that
            does not build a model; a ``tiger`` section that disagrees with the tensors (naming ``source``
            and the keys / shapes).
        tiger.experts.ExpertWeightsError: an expert's weights cannot be found (with a hint on
            ``expert_weights``).
        ModuleNotFoundError: an expert's module (``module`` or ``_target_``) cannot be imported here (naming
            it, the role and ``source``).
    """
    section, state = saved[checkpoint.SECTION], saved["state_dict"]
    stored = dict(section["net"])
    experts = stored.get("experts") or {}
    roles = [str(role) for role in experts] if isinstance(experts, Mapping) else [e["name"] for e in experts]
    identities = [dict(identity) for identity in section["experts"]]
    if len(identities) != len(roles):
        raise checkpoint.CheckpointError(
            f"{source}: {len(identities)} expert identities for {len(roles)} configured experts"
        )
    overrides = dict(expert_weights or {})
    unknown = sorted(set(overrides) - set(roles))
    if unknown:
        raise checkpoint.CheckpointError(
            f"expert_weights names roles {unknown} that {source} does not have; its roles: {roles}"
        )
    for role, identity in zip(roles, identities, strict=True):
        if role in overrides and TARGET in identity:
            raise checkpoint.CheckpointError(
                f"expert_weights names role {role!r}, whose expert {source} builds with "
                f"{identity[TARGET]} and the arguments stored with it; its weights are that callable's "
                "business, not expert_weights'"
            )
        if role in overrides:
            identity["weights"] = None if overrides[role] is None else str(overrides[role])
    try:
        config = TigerConfig(**{**stored, "experts": dict(zip(roles, identities, strict=True))})
    except (ValueError, TypeError) as error:
        raise checkpoint.CheckpointError(
            f"{source}: its {checkpoint.SECTION!r} section does not build a model: {error}"
        ) from error
    embeddings = state.get(checkpoint.INSTRUCTION_KEY)
    if config.instruction_encoder is not None and embeddings is None:
        raise checkpoint.CheckpointError(
            f"{source}: the model was trained with instruction encoder {config.instruction_encoder!r} but "
            f"its state_dict has no {checkpoint.INSTRUCTION_KEY!r}"
        )
    try:
        model = build_tiger(config, instruction_embeddings=embeddings)
    except ExpertWeightsError as error:
        listed = ", ".join(f"{role}={identity.get('name')}" for role, identity in config.experts.items())
        raise ExpertWeightsError(
            f"{error}\n(inference: give local weights per expert role with load_model(..., expert_weights="
            f"{{role: path}}) or `python -m tiger.predict ... --expert-weights role=path`; roles: {listed})"
        ) from error
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            f"{source}: cannot rebuild its experts: {error}. The checkpoint stores how to build each expert, "
            "not the code: make that module importable where you load it",
            name=error.name,
        ) from error
    except (ValueError, TypeError, RuntimeError) as error:
        raise checkpoint.CheckpointError(
            f"{source}: its {checkpoint.SECTION!r} section does not build a model: {error}"
        ) from error
    checkpoint.load_trainable(model, state, source)
    if model.task_names != list(section["tasks"]):
        raise checkpoint.CheckpointError(
            f"{source}: rebuilt tasks {model.task_names} differ from stored {list(section['tasks'])}"
        )
    return model
