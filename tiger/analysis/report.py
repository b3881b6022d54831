"""The end-of-run report: validation table, expert-usage table, routing faithfulness and a routing figure
(the paper's Fig. 5)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from tiger.analysis.figures import plot_routing, save_figure
from tiger.analysis.routing import format_shapley_table, format_usage_table
from tiger.metrics import format_table
from tiger.model.tiger import TIGER


def split_metrics(logged: Mapping[str, Any], task_names: list[str]) -> dict[str, dict[str, float]]:
    """Logged validation metrics ``val/<task>/<metric>`` -> {task: {metric: value}} in task order."""
    metrics: dict[str, dict[str, float]] = {task: {} for task in task_names}
    for key, value in logged.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "val" and parts[1] in metrics:
            metrics[parts[1]][parts[2]] = float(value)
    return metrics


@torch.no_grad()
def write_report(
    net: TIGER,
    dataset: str,
    metrics: Mapping[str, Mapping[str, float]],
    routing: Mapping[str, Any],
    images: torch.Tensor,
    output_dir: Path,
) -> dict[str, Any]:
    """Print the report of a trained model after its validation, and save its routing figure.

    Args:
        net: the trained TIGER.
        dataset: the data set's name, for the title.
        metrics: {task: {metric: value}} of the validation.
        routing: the validation's :meth:`tiger.analysis.routing.RoutingStatistics.compute`.
        images: a validation batch (B, 3, H, W); the first image is drawn.
        output_dir: where ``routing.png`` goes.

    Returns:
        ``{"routing_figure": path}``.
    """
    net = net.eval()
    device = next(p for p in net.parameters() if p.requires_grad).device
    image = images[:1].to(device)
    alpha = net(image).alpha[0].float().cpu()
    figure_path = save_figure(
        plot_routing(image[0].cpu(), alpha, net.grid, net.task_names, net.expert_names),
        output_dir / "routing.png",
    )
    print(f"\nValidation ({dataset}):\n" + format_table(dict(metrics), net.task_names))
    if len(net.expert_names) > 1:
        print(
            "\nMean routing weight per task and expert (validation images):\n"
            + format_usage_table(routing["usage"])
        )
        for removal, rows in (routing.get("target_agreement") or {}).items():
            print(f"\nRouting vs its counterfactual training target ({removal} removal, validation set):")
            print(
                "\n".join(
                    f"{task:<12} Spearman {r['spearman']:+.3f}  top-1 {r['top1']:.3f}"
                    for task, r in rows.items()
                )
            )
        if routing.get("shapley"):
            print(
                "\nRouting vs Shapley credit (validation images):\n"
                + format_shapley_table(routing["shapley"])
            )
    print(f"\nRouting figure: {figure_path}")
    return {"routing_figure": str(figure_path)}
