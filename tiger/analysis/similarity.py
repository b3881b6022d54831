"""How similar the tasks are along the routing path (the paper's Fig. 6): instructions, task
representations, and the hyper-network's task-dependent part."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _cosine_matrix(vectors: Tensor) -> np.ndarray:
    unit = F.normalize(vectors.double().flatten(1), dim=1)
    return (unit @ unit.T).clamp(-1.0, 1.0).numpy()


@torch.no_grad()
def task_similarity(
    model: nn.Module, hyper: Literal["outputs", "weights"] = "outputs"
) -> dict[str, np.ndarray]:
    """Cosine similarities (T, T) between the tasks' representations along the routing path.

    Args:
        model: a :class:`tiger.model.TIGER`.
        hyper: what stands for a task after the hyper-network (eq. 4).
            ``"outputs"`` (default): the concatenation [g(t), h(t)] of the hyper-network's two task MLPs,
            i.e. the whole task-dependent part of the query projection in its own coordinates. It is
            informative from initialisation on (V starts at zero, so W_Q(t) - W0 is zero at first).
            ``"weights"``: the flattened update [W_Q(t) - W0, b_Q(t) - b0] = [U diag(g(t)) V^T, h(t)],
            i.e. the change each task makes to the query projection itself.

    Returns:
        {"instruction": of t0 (only when the model uses instructions), "task": of t = LayerNorm(t0) + p_t
        (eq. 3), "hyper": after the hyper-network}, each float64 (T, T), symmetric with a unit diagonal
        (a zero vector gets 0 similarity, its own included).
    """
    if hyper not in ("outputs", "weights"):
        raise ValueError(f"hyper must be 'outputs' or 'weights', got {hyper!r}")
    representation = model.task_representation
    tasks = representation()
    sims: dict[str, np.ndarray] = {}
    if representation.uses_instructions:
        sims["instruction"] = _cosine_matrix(representation.instruction_embeddings)
    sims["task"] = _cosine_matrix(tasks)
    network = model.hyper
    if hyper == "outputs":
        sims["hyper"] = _cosine_matrix(torch.cat([network.g(tasks), network.h(tasks)], dim=1))
    else:
        weight, bias = network.weight(tasks)
        sims["hyper"] = _cosine_matrix(
            torch.cat([(weight - network.w0).flatten(1), bias - network.b0], dim=1)
        )
    return sims
