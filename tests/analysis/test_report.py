"""The end-of-run report: the results table first, routing tables only where there is routing to judge."""

from __future__ import annotations

from pathlib import Path

import torch

from tiger.analysis.report import write_report
from tiger.model.build import build_tiger

METRICS = {"semseg": {"mIoU": 12.5}, "depth": {"rmse": 0.75}}


def routing(experts: list[str], value: float) -> dict:
    rows = {task: {"spearman": value, "top1": value, "jsd": value, "tokens": 4.0} for task in METRICS}
    usage = {task: {expert: 1 / len(experts) for expert in experts} for task in METRICS}
    return {"usage": usage, "target_agreement": {"subtract": rows}}


def test_a_single_expert_run_reports_no_routing_tables(tiny_config, tmp_path: Path, capsys) -> None:
    net = build_tiger(tiny_config(experts=("clip_tiny",)))
    images = torch.rand(2, 3, 32, 32)
    result = write_report(net, "synthetic", METRICS, routing(["clip_tiny"], float("nan")), images, tmp_path)
    printed = capsys.readouterr().out
    assert "Validation (synthetic):" in printed and "12.50" in printed
    assert "nan" not in printed.lower() and "Spearman" not in printed and "routing weight" not in printed
    assert Path(result["routing_figure"]).is_file()


def test_a_routed_run_reports_usage_and_agreement(tiny_config, tmp_path: Path, capsys) -> None:
    net = build_tiger(tiny_config(experts=("clip_tiny", "sam_tiny")))
    write_report(
        net, "synthetic", METRICS, routing(["clip_tiny", "sam_tiny"], 0.5), torch.rand(2, 3, 32, 32), tmp_path
    )
    printed = capsys.readouterr().out
    assert (
        printed.index("Validation (synthetic):")
        < printed.index("Mean routing weight")
        < printed.index("Spearman")
    )
    assert "50.0%" in printed
