"""TigerModule: what its validation step hands to the metrics."""

from functools import partial

import pytest
import torch

from tiger.lightning import TigerModule
from tiger.metrics.boundary_matching import NUM_GT

NET = dict(
    experts={"dinov2": {"name": "dinov2_tiny"}},
    tasks=["edge"],
    grid=(3, 4),
    instructions={"encoder": None},
    dim=32,
    rank=4,
    hyper_hidden=16,
    query_width=16,
    num_heads=4,
    decoder_width=32,
)


def test_validation_scores_boundaries_against_the_seism_ground_truth():
    torch.manual_seed(0)
    module = TigerModule(NET, {}, partial(torch.optim.AdamW, lr=1e-4), None, "synthetic")
    edge = torch.zeros(1, 40, 48)
    edge[0, 20, :] = 1.0  # the training target: one horizontal line
    seism = torch.zeros(1, 40, 48, dtype=torch.uint8)
    seism[0, 10:30, 24] = 1  # the metric's ground truth: a 20-pixel vertical line
    batch = {"image": torch.rand(1, 3, 40, 48), "edge": edge, "edge_seism": seism}
    with torch.no_grad():
        module.validation_step(batch, 0)
    assert int(module.val_metrics["edge"].counts[NUM_GT, 0]) == 20  # not the 48 pixels of the target
    with pytest.raises(KeyError, match="edge_seism"), torch.no_grad():
        module.validation_step({"image": batch["image"], "edge": edge}, 0)
