"""The benchmark scripts run end to end on small settings (so they never rot) and report sane figures."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(env: dict[str, str], name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / name), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**env, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_bench_step_counts_the_counterfactual_flops_on_the_tiny_model(offline_env, tmp_path):
    figures = tmp_path / "bench.json"
    out = run_script(
        offline_env(), "bench_step.py", "--configs", "tiny", "--steps", "1", "--json", str(figures)
    )
    (row,) = json.loads(figures.read_text())
    assert row["config"] == "tiny" and row["experts"] == 4
    assert row["trainable"] > 0 and row["frozen"] > 0 and min(row["seconds"]) > 0
    flops, flops_cf = row["flops"]
    # the counterfactual pass adds forward-only FLOPs: more than nothing, fewer than M = 4 full steps
    assert flops < flops_cf < 4 * flops
    # the printed table shows the same exact counts
    printed = next(line for line in out.splitlines() if line.startswith("tiny "))
    assert f"{flops / 1e9:9.2f} {flops_cf / 1e9:10.2f} {100 * (flops_cf / flops - 1):8.1f}%" in printed


def test_bench_boundary_scores_its_synthetic_maps(offline_env):
    out = run_script(offline_env(), "bench_boundary.py", "--n", "3", "--size", "60", "80", "--workers", "1")
    ods = float(re.search(r"ODS-F (\d+\.\d+)", out).group(1))
    ois = float(re.search(r"OIS-F (\d+\.\d+)", out).group(1))
    assert 0 < ods <= ois <= 100  # the per-image best threshold can only do better than the data-set one
    assert "3 images x 101 thresholds" in out


def test_bench_data_reports_throughputs(offline_env):
    out = run_script(
        offline_env(), "bench_data.py", "--seconds", "0.5", "--nyud-images", "4", "--workers", "0"
    )
    rates = [float(x) for x in re.findall(r"(\d+\.\d+)  (?:scenes|samples)/s", out)]
    assert len(rates) == 3 and all(rate > 0 for rate in rates), out
