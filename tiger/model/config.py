"""The model's typed, frozen configuration: what to build (experts, tasks, instructions) and every size and
switch of TIGER, checked once, when it is constructed.

Hydra builds it from ``conf/model/tiger.yaml`` (``model.net``, ``_target_: tiger.model.TigerConfig``); a
checkpoint stores :meth:`TigerConfig.to_dict` and rebuilds it with ``TigerConfig(**stored)``. A value out of
range raises an :class:`tiger.options.OptionError` naming its key (``grid``, ``task_weights.depth``,
``instructions.texts.depth``), to which the caller adds where the config came from (``model.net``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tiger import options
from tiger.experts.target import TARGET
from tiger.model.instructions import DEFAULT_ENCODER
from tiger.tasks import TASKS


@dataclass(frozen=True)
class TigerConfig:
    """What TIGER is built from.

    Attributes:
        experts: expert role -> spec for :func:`tiger.experts.build_expert`: ``{name, weights, [module],
            **options}``, or ``{_target_, [name], **arguments}`` (any callable, see
            :mod:`tiger.experts.target`; its ``name`` defaults to the role). A list of specs is keyed by
            their names.
        tasks: task names, in output order.
        grid: the shared token grid (H, W).
        num_semseg_classes: classes of ``semseg`` (NYUD 40, PASCAL 21); required when ``semseg`` is a task.
        task_weights: lambda_j per task (eq. 14), finite and >= 0; 1 where absent.
        instructions: ``{"encoder": a sentence-transformers name or folder, or None for learnable task
            embeddings only (Table 4), "texts": {task: instruction sentence} overriding the defaults}``.
        dim: shared token width d.
        task_dim: d_t of the learnable task embeddings (without instructions; else the encoder's width).
        rank: rank r of the hyper-network (eq. 4).
        hyper_hidden: hidden width of g and h (eq. 4).
        query_width: channels of the query encoder (a multiple of 16).
        expert_interaction: expert-interactive attention before routing (Sec. 3.4).
        task_interaction: task-interactive attention after routing (Sec. 3.4).
        expert_interaction_layers: transformer layers of the expert interaction (run once per step).
        task_interaction_layers: transformer layers of the task interaction (after routing: re-run for each
            expert by the counterfactual objective).
        num_heads: attention heads of each interaction module (divides ``dim``).
        decoder_width: channels of the shared decoder's first block (halved at every upsampling stage, each
            stage split by GroupNorm into min(32, C // 4) groups).
        decoder_upsamples: 2x upsampling stages of the shared decoder.
        projection_hidden: hidden width of the eq. 2 FFN (None: 2 ``dim``).

    Sizes of a switched-off part are not checked.
    """

    experts: Mapping[str, Mapping[str, Any]]
    tasks: Sequence[str]
    grid: Sequence[int]
    num_semseg_classes: int | None = None
    task_weights: Mapping[str, float] = field(default_factory=dict)
    instructions: Mapping[str, Any] = field(default_factory=lambda: {"encoder": DEFAULT_ENCODER, "texts": {}})
    dim: int = 256
    task_dim: int = 384
    rank: int = 16
    hyper_hidden: int = 256
    query_width: int = 64
    expert_interaction: bool = True
    task_interaction: bool = True
    expert_interaction_layers: int = 1
    task_interaction_layers: int = 1
    num_heads: int = 8
    decoder_width: int = 256
    decoder_upsamples: int = 2
    projection_hidden: int | None = None

    def __post_init__(self) -> None:
        set_field = object.__setattr__  # frozen: normalise the values once, here
        set_field(self, "experts", _experts(self.experts))
        set_field(self, "tasks", _tasks(self.tasks))
        set_field(self, "grid", options.size(self.grid, "grid"))
        set_field(self, "task_weights", _weights(self.task_weights, self.tasks))
        set_field(self, "instructions", _instructions(self.instructions))
        if "semseg" in self.tasks:
            options.integer(self.num_semseg_classes, "num_semseg_classes", minimum=2)
        options.flag(self.expert_interaction, "expert_interaction")
        options.flag(self.task_interaction, "task_interaction")
        unused = set()
        if not (self.expert_interaction or self.task_interaction):
            unused.add("num_heads")
        if not self.expert_interaction:
            unused.add("expert_interaction_layers")
        if not self.task_interaction:
            unused.add("task_interaction_layers")
        for key in SIZES:
            value = getattr(self, key)
            if key not in unused and not (key == "projection_hidden" and value is None):
                options.integer(value, key, minimum=0 if key == "decoder_upsamples" else 1)
        if "num_heads" not in unused and self.dim % self.num_heads:
            raise options.OptionError("num_heads", f"must divide dim={self.dim}, got {self.num_heads}")
        if self.query_width % 16:
            raise options.OptionError("query_width", f"must be a multiple of 16, got {self.query_width}")
        _check_decoder(self.decoder_width, self.decoder_upsamples)

    @property
    def instruction_encoder(self) -> str | None:
        """The Sentence-BERT encoder, or None for learnable task embeddings only."""
        return self.instructions["encoder"]

    def instruction_texts(self) -> list[str]:
        """One instruction sentence per task, in task order: the override, else the task entry's."""
        texts = self.instructions["texts"]
        return [texts.get(name) or TASKS[name].instruction for name in self.tasks]

    def to_dict(self) -> dict[str, Any]:
        """Plain containers (what a checkpoint stores; ``TigerConfig(**to_dict())`` gives it back)."""
        return plain(dataclasses.asdict(self))


SIZES = (
    "dim",
    "task_dim",
    "rank",
    "hyper_hidden",
    "query_width",
    "expert_interaction_layers",
    "task_interaction_layers",
    "num_heads",
    "decoder_width",
    "decoder_upsamples",
    "projection_hidden",
)


def plain(value: Any) -> Any:
    """Mappings, sequences and tuples -> plain dicts and lists (storable with ``weights_only=True``)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def _experts(experts: Any) -> dict[str, dict[str, Any]]:
    if isinstance(experts, Sequence) and not isinstance(experts, str):
        experts = {spec.get("name", index) if isinstance(spec, Mapping) else index: spec
                   for index, spec in enumerate(experts)}  # fmt: skip
    if not isinstance(experts, Mapping) or not experts:
        raise options.OptionError("experts", f"must name at least one expert (role: spec), got {experts!r}")
    checked = {}
    for role, spec in experts.items():
        if isinstance(spec, Mapping) and TARGET in spec:
            spec = {**spec, "name": spec.get("name") or str(role)}
        if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
            raise options.OptionError(
                f"experts.{role}", f"must be a spec with a 'name' or a '{TARGET}', got {spec!r}"
            )
        checked[str(role)] = plain(spec)
    return checked


def _tasks(tasks: Any) -> tuple[str, ...]:
    if isinstance(tasks, str) or not isinstance(tasks, Sequence) or not tasks:
        raise options.OptionError("tasks", f"must be a non-empty list of task names, got {tasks!r}")
    names = tuple(tasks)
    for name in names:
        options.choice(name, "tasks", list(TASKS))
    if len(set(names)) != len(names):
        raise options.OptionError("tasks", f"names a task twice: {list(names)}")
    return names


def _weights(weights: Any, tasks: Sequence[str]) -> dict[str, float]:
    if weights is None:
        weights = {}
    if not isinstance(weights, Mapping):
        raise options.OptionError("task_weights", f"must map task names to weights, got {weights!r}")
    checked = {}
    for name, weight in weights.items():
        options.choice(name, "task_weights", list(TASKS))
        checked[name] = options.real(weight, f"task_weights.{name}", minimum=0.0)
    return checked


def _instructions(instructions: Any) -> dict[str, Any]:
    if instructions is None:
        instructions = {}
    if not isinstance(instructions, Mapping):
        raise options.OptionError("instructions", f"must be {{encoder, texts}}, got {instructions!r}")
    unknown = sorted(set(instructions) - {"encoder", "texts"})
    if unknown:
        raise options.OptionError(
            f"instructions.{unknown[0]}", "is not an option; the options are encoder, texts"
        )
    encoder = instructions.get("encoder", DEFAULT_ENCODER)
    if encoder is not None and (not isinstance(encoder, str) or not encoder.strip()):
        raise options.OptionError(
            "instructions.encoder",
            f"must be a sentence-transformers name or folder, or null, got {encoder!r}",
        )
    texts = instructions.get("texts") or {}
    if not isinstance(texts, Mapping):
        raise options.OptionError("instructions.texts", f"must map task names to sentences, got {texts!r}")
    for name, text in texts.items():
        options.choice(name, "instructions.texts", list(TASKS))
        if not isinstance(text, str) or not text.strip():
            raise options.OptionError(
                f"instructions.texts.{name}", f"must be a non-empty instruction sentence, got {text!r}"
            )
    return {"encoder": encoder, "texts": dict(texts)}


def _check_decoder(width: int, upsamples: int) -> None:
    stages = [width // 2**i for i in range(upsamples + 1)]
    for channels in stages:
        if channels < 4 or channels % min(32, channels // 4):
            raise options.OptionError(
                "decoder_width",
                f"must halve into channel counts C that GroupNorm splits into min(32, C // 4) groups, got "
                f"{width}: with decoder_upsamples={upsamples} the stages are {stages} and {channels} is not; "
                f"a multiple of {32 * 2**upsamples} always is",
            )
