"""TIGER: Task-Instruction-Guided Expert Routing of frozen vision foundation models for dense multi-task
learning. Train with ``python -m tiger.train``; predict with :func:`load_model` or
``python -m tiger.predict``.

The package root stays light: ``import tiger`` (or ``tiger.tasks``) loads no model, expert library or
matplotlib; the names below are imported from :mod:`tiger.inference` on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tiger.inference import Prediction, Predictor, RoutingReport, load_model

__all__ = ["Prediction", "Predictor", "RoutingReport", "load_model"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("tiger.inference"), name)
    raise AttributeError(f"module 'tiger' has no attribute {name!r}")
