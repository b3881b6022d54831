"""The one owner of the checkpoint format: what a checkpoint holds, reading it, and whether it fits.

A checkpoint is a Lightning checkpoint of :class:`tiger.training.module.TigerModule` (``torch.save`` of plain
containers and tensors, read with ``torch.load(..., weights_only=True)``) whose ``state_dict`` holds only
what was trained (``net.*`` without the frozen ``net.experts.*``: those are rebuilt from their
identities), plus a ``tiger`` section::

    {"format": 1, "net": build_tiger kwargs, "loss": TigerLoss kwargs, "dataset": str,
     "tasks": [task names], "experts": [expert identities (build_expert kwargs)]}

The Sentence-BERT instruction embeddings are a buffer of the state dict
(:data:`INSTRUCTION_KEY`), so loading needs no text encoder.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

FORMAT = 1
SUPPORTED_FORMATS = (1,)
SECTION = "tiger"
PREFIX = "net."  # the TIGER model's attribute in TigerModule
FROZEN = "experts."  # the frozen experts' keys in the TIGER state dict
INSTRUCTION_KEY = f"{PREFIX}task_representation.instruction_embeddings"
SHOW_FILES = 8


class CheckpointError(ValueError):
    """A file that is not a readable TIGER checkpoint, or one that does not fit (the message names it)."""


def tiger_section(model: nn.Module, loss: Mapping[str, Any], dataset: str) -> dict[str, Any]:
    """The ``tiger`` section of a checkpoint of ``model`` (a TIGER, which carries its config)."""
    return {
        "format": FORMAT,
        "net": model.config.to_dict(),
        "loss": dict(loss),
        "dataset": dataset,
        "tasks": list(model.task_names),
        "experts": [dict(expert.identity) for expert in model.experts],
    }


def trainable_state(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A TigerModule state dict -> what a checkpoint stores (everything but ``net.experts.*``)."""
    return {key: value for key, value in state_dict.items() if not key.startswith(PREFIX + FROZEN)}


def frozen_state(model: nn.Module) -> dict[str, Tensor]:
    """The frozen experts' weights of ``model`` (a TIGER) under their TigerModule keys (``net.experts.*``):
    what a checkpoint leaves out and a strict load of the module needs back."""
    return {PREFIX + key: value for key, value in model.state_dict().items() if key.startswith(FROZEN)}


def load_trainable(model: nn.Module, state: Mapping[str, Tensor], source: str | Path = "") -> None:
    """Load a stored state dict (``net.*`` keys) into ``model`` (a TIGER) with ``strict=True``.

    Raises:
        CheckpointError: naming ``source`` and, as torch does, every missing, unexpected and mis-shaped key.
    """
    trained = {key[len(PREFIX) :]: value for key, value in state.items() if key.startswith(PREFIX)}
    frozen = {key: value for key, value in model.state_dict().items() if key.startswith(FROZEN)}
    try:
        model.load_state_dict({**trained, **frozen}, strict=True)
    except RuntimeError as error:
        where = f"{source}: " if source else ""
        raise CheckpointError(
            f"{where}the checkpoint does not fit this TIGER configuration: {error}"
        ) from None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file on the CPU (``weights_only=True``) and check that it is a TIGER checkpoint.

    Raises:
        FileNotFoundError: no such file (a folder: says so and lists the checkpoints in it).
        CheckpointError: ``not a TIGER checkpoint: <path> ...`` when it cannot be read (the reason, e.g. the
            pickled global that ``weights_only`` blocks, or that it is no torch file:
            :func:`describe_load_failure`), has no ``tiger`` section (e.g. a plain
            or foreign Lightning dict) or state dict, or has an unknown format.
    """
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"{path} is a folder, not a checkpoint file; {_listing(path)}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError ... on foreign files
        raise CheckpointError(
            f"not a TIGER checkpoint: {path} {describe_load_failure(path, error)}"
        ) from None
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get(SECTION), Mapping):
        keys = (
            sorted(map(str, checkpoint))[:8] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        )
        raise CheckpointError(
            f"not a TIGER checkpoint: {path} has no {SECTION!r} section (it has {keys}); checkpoints are "
            "written by `python -m tiger.train`"
        )
    saved = checkpoint[SECTION]
    if saved.get("format") not in SUPPORTED_FORMATS:
        raise CheckpointError(
            f"not a TIGER checkpoint: {path} has tiger format {saved.get('format')!r}; this version reads "
            f"formats {list(SUPPORTED_FORMATS)}"
        )
    for key in ("net", "experts", "tasks"):
        if key not in saved:
            raise CheckpointError(f"not a TIGER checkpoint: {path}: its {SECTION!r} section lacks {key!r}")
    if not isinstance(checkpoint.get("state_dict"), Mapping):
        raise CheckpointError(f"not a TIGER checkpoint: {path} has no 'state_dict'")
    return dict(checkpoint)


def check_fits(checkpoint: Mapping[str, Any], section: Mapping[str, Any], source: str | Path = "") -> None:
    """Raise a :class:`CheckpointError` naming ``source`` and the difference when ``checkpoint`` comes from
    another configuration than the one whose :func:`tiger_section` is ``section`` (experts, tasks)."""
    where = f"{source}: " if source else ""
    saved = checkpoint.get(SECTION)
    if not isinstance(saved, Mapping) or "experts" not in saved or "tasks" not in saved:
        raise CheckpointError(
            f"{where}not a TIGER checkpoint: it has no {SECTION!r} section (experts, tasks, config)"
        )
    differences = []
    saved_experts = [expert.get("name") for expert in saved["experts"]]
    own_experts = [expert.get("name") for expert in section["experts"]]
    if saved_experts != own_experts:
        differences.append(f"experts: checkpoint {saved_experts} vs configured {own_experts}")
    if list(saved["tasks"]) != list(section["tasks"]):
        differences.append(f"tasks: checkpoint {list(saved['tasks'])} vs configured {list(section['tasks'])}")
    if differences:
        raise CheckpointError(
            f"{where}the checkpoint comes from another configuration: " + "; ".join(differences)
        )


def _is_zip(path: Path) -> bool:
    """torch's zip format (memory-mapped loading needs it); legacy files load without ``mmap``."""
    with path.open("rb") as file:
        return file.read(4) == b"PK\x03\x04"


LEGACY_MAGIC = b"\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"
"""The pickled magic number that opens a file of torch's legacy (non-zip) format."""


def _is_torch_file(path: Path) -> bool:
    """A file that ``torch.save`` could have written: its zip archive, or its legacy format."""
    try:
        with Path(path).open("rb") as file:
            head = file.read(32)
    except OSError:
        return True  # let torch.load report it
    return head.startswith(b"PK\x03\x04") or LEGACY_MAGIC in head


def _listing(folder: Path) -> str:
    found = sorted(folder.rglob("*.ckpt"))
    if not found:
        return "it holds no .ckpt file (`python -m tiger.train` writes them to <run>/checkpoints/)"
    shown = ", ".join(str(p.relative_to(folder)) for p in found[:SHOW_FILES])
    more = f" ... (+{len(found) - SHOW_FILES} more)" if len(found) > SHOW_FILES else ""
    return f"it holds {len(found)} checkpoint(s): {shown}{more}; name one of them"


BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation", "weights_only")
"""Lines of torch's ``weights_only`` errors that are advice, not the reason (one says to load unsafely)."""


def describe_load_failure(path: str | Path, error: BaseException, limit: int = 300) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, to follow the file's name; never torch's advice to
    load with ``weights_only=False``.

    - a blocked global (a pickle that would call ``posix.system``, a pickled class): ``holds the pickled
      Python global posix.system, which ...`` (nothing from the file ran);
    - a file that ``torch.save`` did not write (a plain pickle, random bytes): ``cannot be read: it is not a
      torch checkpoint``;
    - otherwise (truncated, corrupt): ``cannot be read (truncated or corrupt?): <torch's reason>``.
    """
    text = str(error)
    blocked = re.search(r"GLOBAL ([\w.]+)", text)
    if blocked:
        return (
            f"holds the pickled Python global {blocked.group(1)}, which a TIGER checkpoint never contains "
            "(it holds only tensors and plain containers); tiger reads checkpoints with "
            "torch.load(weights_only=True), which blocks it, so nothing from the file ran"
        )
    if not _is_torch_file(Path(path)):
        return (
            "cannot be read: it is not a torch checkpoint (torch.save writes a zip archive, and this file is "
            "not one)"
        )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reasons = [line for line in lines if not any(marker in line for marker in BOILERPLATE)]
    reason = reasons[0] if reasons else ""
    reason = reason.removeprefix("WeightsUnpickler error:").strip()
    reason = reason if len(reason) <= limit else reason[:limit] + "..."
    name = type(error).__name__
    return (
        f"cannot be read (truncated or corrupt?): {name}: {reason}"
        if reason
        else (f"cannot be read (truncated or corrupt?): {name}")
    )


def check_resumable(path: str | Path) -> Path:
    """``path`` if it is a TIGER checkpoint that ``python -m tiger.train ckpt_path=...`` can resume or
    validate; the errors of :func:`read_checkpoint` otherwise (before Lightning sees the file)."""
    read_checkpoint(path)
    return Path(path)
