"""TIGER: Task-Instruction-Guided Expert Routing of frozen vision foundation models for dense
multi-task learning. Train with ``python -m tiger.train``; predict with :func:`load_model` or
``python -m tiger.predict``."""

from tiger.inference import Prediction, Predictor, RoutingReport, load_model

__all__ = ["Prediction", "Predictor", "RoutingReport", "load_model"]
