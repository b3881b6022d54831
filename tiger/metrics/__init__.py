"""Protocol-exact metrics (PROTOCOL.md section 4): streaming torchmetrics Metrics, correct under DDP."""

from __future__ import annotations

from torchmetrics import Metric

from tiger.metrics.boundary import BOUNDARY_MAX_DIST, BoundaryF, evaluate_boundaries
from tiger.metrics.dense import DepthRMSE, MeanIoU, NormalsError, SaliencyMaxF
from tiger.metrics.summary import MAIN_METRIC, format_table, main_values, multi_task_delta
from tiger.tasks import Task


def build_metric(task: Task, dataset: str) -> Metric:
    """The protocol metric of ``task`` on ``dataset`` (nyud, pascal or synthetic): the task entry's
    :meth:`tiger.tasks.Task.metric`.

    semseg / human_parts: :class:`MeanIoU` (``task.channels`` classes); sal: :class:`SaliencyMaxF`
    (``make_task("sal", double_sigmoid=True)`` reproduces the InvPT-lineage quirk); edge: :class:`BoundaryF`
    with the data set's tolerance (:data:`BOUNDARY_MAX_DIST`); normals: :class:`NormalsError`; depth:
    :class:`DepthRMSE`.
    """
    if dataset not in BOUNDARY_MAX_DIST:
        raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(BOUNDARY_MAX_DIST)}")
    return task.metric(dataset)


__all__ = [
    "BOUNDARY_MAX_DIST",
    "MAIN_METRIC",
    "BoundaryF",
    "DepthRMSE",
    "MeanIoU",
    "NormalsError",
    "SaliencyMaxF",
    "build_metric",
    "evaluate_boundaries",
    "format_table",
    "main_values",
    "multi_task_delta",
]
