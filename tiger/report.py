"""The end-of-run report: validation table, expert-usage table and a routing figure (the paper's Fig. 5)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tiger.analysis import expert_usage, format_usage_table
from tiger.metrics import format_table
from tiger.viz import plot_routing, save_figure


@torch.no_grad()
def write_report(module: Any, datamodule: Any, output_dir: Path, max_batches: int = 4) -> dict[str, Any]:
    """Print and save the report of a trained :class:`tiger.lightning.TigerModule`.

    Returns ``{"routing_figure": path, "expert_usage": {task: {expert: weight}}, "routing": the last
    validation's :class:`tiger.analysis.RoutingStatistics` (usage and faithfulness over the whole validation
    set), "routing_history": [{"step", "usage"}] of the validations during training}``.
    """
    net = module.net.eval()
    device = next(p for p in net.parameters() if p.requires_grad).device
    alphas, first = [], None
    for index, batch in enumerate(datamodule.val_dataloader()):
        if index >= max_batches:
            break
        images = batch["image"].to(device)
        output = net(images)
        alphas.append(output.alpha.float().cpu())
        if first is None:
            first = (images[0].cpu(), output.alpha[0].float().cpu())
    usage = expert_usage(alphas, net.task_names, net.expert_names)
    figure_path = save_figure(
        plot_routing(first[0], first[1], net.grid, net.task_names, net.expert_names),
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
