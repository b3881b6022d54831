"""The end-of-run report: validation table, expert-usage table and a routing figure (the paper's Fig. 5)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tiger.analysis import format_usage_table
from tiger.metrics import format_table
from tiger.viz import plot_routing, save_figure


@torch.no_grad()
def write_report(module: Any, datamodule: Any, output_dir: Path) -> dict[str, Any]:
    """Print and save the report of a trained :class:`tiger.lightning.TigerModule` after its validation.

    Returns ``{"routing_figure": path, "expert_usage": {task: {expert: weight}} over the whole validation set,
    "routing": the last validation's :class:`tiger.analysis.RoutingStatistics` (usage and faithfulness),
    "routing_history": [{"step", "usage"}] of training batches every log_every_n_steps}``.
    """
    net = module.net.eval()
    device = next(p for p in net.parameters() if p.requires_grad).device
    images = next(iter(datamodule.val_dataloader()))["image"][:1].to(device)
    alpha = net(images).alpha[0].float().cpu()
    usage = module.last_routing["usage"]  # measured by the validation itself, over every image
    figure_path = save_figure(
        plot_routing(images[0].cpu(), alpha, net.grid, net.task_names, net.expert_names),
        output_dir / "routing.png",
    )
    print("\nValidation (" + module.dataset + "):\n" + format_table(module.last_val_results, net.task_names))
    print("\nMean routing weight per task and expert (validation images):\n" + format_usage_table(usage))
    print(f"\nRouting figure: {figure_path}")
    faithfulness = module.last_routing.get("faithfulness") or {}
    for removal, rows in faithfulness.items():
        print(f"\nRouting vs counterfactual importance ({removal} removal, validation set):")
        print(
            "\n".join(
                f"{task:<12} Spearman {r['spearman']:+.3f}  top-1 {r['top1']:.3f}" for task, r in rows.items()
            )
        )
    return {
        "routing_figure": str(figure_path),
        "expert_usage": usage,
        "routing": module.last_routing,
        "routing_history": module.routing_history,
    }
