import numpy as np
import pytest
import torch

from tiger.tasks import (
    TASK_NAMES,
    TASKS,
    Depth,
    make_task,
    metric_target,
    palette,
    register_task,
    unit_vectors,
)


def test_channels_per_task():
    assert make_task("semseg", num_classes=40).channels == 40
    assert make_task("semseg", num_classes=21).channels == 21
    assert {name: make_task(name, num_classes=5).channels for name in TASK_NAMES if name != "semseg"} == {
        "human_parts": 7,
        "sal": 2,
        "edge": 1,
        "normals": 3,
        "depth": 1,
    }


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ValueError, match="known tasks: semseg, human_parts"):
        make_task("optical_flow")
    with pytest.raises(ValueError, match="num_classes"):
        make_task("semseg")


def test_postprocess_gives_user_units():
    logits = torch.tensor([[[[0.0]], [[2.0]], [[-1.0]]]])  # (1, 3, 1, 1)
    assert make_task("semseg", num_classes=3).postprocess(logits).tolist() == [[[1]]]
    normals = make_task("normals").postprocess(torch.tensor([[[[3.0]], [[0.0]], [[4.0]]]]))
    torch.testing.assert_close(normals[0, :, 0, 0], torch.tensor([0.6, 0.0, 0.8]))
    assert make_task("edge").postprocess(torch.zeros(1, 1, 2, 2)).tolist() == [[[0.5, 0.5], [0.5, 0.5]]]
    sal = make_task("sal").postprocess(torch.tensor([[[[0.0]], [[torch.log(torch.tensor(3.0))]]]]))
    assert sal.item() == pytest.approx(0.75)
    assert make_task("depth").postprocess(torch.tensor([[[[-1.0, 2.0]]]])).min() > 0


def test_valid_masks():
    assert make_task("depth").valid_mask(torch.tensor([[[[0.0, 1.5]]]])).tolist() == [[[False, True]]]
    normals = torch.zeros(1, 3, 1, 2)
    normals[0, 2, 0, 1] = 1.0
    assert make_task("normals").valid_mask(normals).tolist() == [[[False, True]]]
    assert make_task("edge").valid_mask(torch.tensor([[[0.0, 255.0]]])).tolist() == [[[True, False]]]


def test_voc_palette():
    colours = palette(21)
    assert colours[0].tolist() == [0, 0, 0]
    assert colours[1].tolist() == [128, 0, 0]
    assert colours[15].tolist() == [192, 128, 128]  # person


def test_unit_vectors_match_torch_normalize_in_values_and_gradients():
    vectors = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    vectors[0, :, 0, 0] = 0.0  # a zero vector stays zero, with a finite gradient
    vectors[1, :, 1, 1] = torch.tensor([3.0, 0.0, 4.0])
    ours = vectors.clone().requires_grad_()
    reference = vectors.clone().requires_grad_()
    weights = torch.randn_like(vectors)
    (unit_vectors(ours) * weights).sum().backward()
    (torch.nn.functional.normalize(reference, dim=1) * weights).sum().backward()
    torch.testing.assert_close(unit_vectors(vectors), torch.nn.functional.normalize(vectors, dim=1))
    torch.testing.assert_close(ours.grad, reference.grad)
    assert unit_vectors(vectors)[1, :, 1, 1].tolist() == pytest.approx([0.6, 0.0, 0.8])
    assert unit_vectors(vectors)[0, :, 0, 0].tolist() == [0.0, 0.0, 0.0]


def test_metric_target_is_the_seism_ground_truth_for_edges_and_never_falls_back():
    batch = {
        "edge": torch.zeros(1, 2, 2),
        "edge_seism": torch.ones(1, 2, 2, dtype=torch.uint8),
        "depth": torch.ones(1),
    }
    assert metric_target("edge", batch) is batch["edge_seism"]
    assert metric_target("depth", batch) is batch["depth"]
    with pytest.raises(KeyError, match="no 'edge_seism', the metric ground truth of task 'edge'"):
        metric_target("edge", {"edge": batch["edge"]})


# ------------------------------------------------------------------------- a task added without editing tiger


@pytest.fixture
def far_depth():
    """A second depth-like regression task, registered from outside the package (and removed after)."""
    entry = register_task(
        Depth("far_depth", 1, "Estimate the distance to the far background at every pixel.")
    )
    yield entry
    del TASKS["far_depth"]


def test_a_registered_task_trains_evaluates_and_round_trips_its_files(far_depth, tmp_path):
    import functools

    import lightning as L
    from torch.utils.data import DataLoader

    from tiger.analysis.report import split_metrics
    from tiger.data.transforms import horizontal_flip, rescale, to_sample
    from tiger.metrics import format_table
    from tiger.model import TigerConfig
    from tiger.training.losses import LossConfig
    from tiger.training.module import TigerModule

    assert make_task("far_depth").title == "far_depth rmse" and far_depth.pad_value == 0.0
    # data: the transforms move its target as the entry says (a depth: divided by the zoom)
    raw = {"id": "a", "image": np.zeros((4, 6, 3), np.uint8), "far_depth": np.full((4, 6), 8.0, np.float32)}
    assert rescale(raw, 2.0)["far_depth"].shape == (8, 12) and (rescale(raw, 2.0)["far_depth"] == 4.0).all()
    assert horizontal_flip(raw)["far_depth"].shape == (4, 6)
    assert to_sample(raw)["far_depth"].shape == (1, 4, 6)

    # one training step and one validation with it, next to a built-in task
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    samples = [
        {
            "image": torch.rand(3, 32, 48, generator=generator),
            "depth": make_task("depth").random_target(1, (32, 48), generator)[0],
            "far_depth": far_depth.random_target(1, (32, 48), generator)[0] + 10.0,
        }
        for _ in range(2)
    ]
    net = dict(
        experts={"clip": {"name": "clip_tiny"}},
        tasks=["depth", "far_depth"],
        grid=[2, 3],
        instructions={"encoder": None},
        dim=32,
        rank=4,
        hyper_hidden=16,
        query_width=16,
        num_heads=4,
        decoder_width=32,
    )
    module = TigerModule(
        TigerConfig(**net),
        LossConfig(lambda_cf=0.1),
        functools.partial(torch.optim.AdamW, lr=1e-3),
        None,
        "synthetic",
    )
    before = module.net.heads.heads["far_depth"][-1].weight.detach().clone()
    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = DataLoader(samples, batch_size=2)
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    assert not torch.equal(module.net.heads.heads["far_depth"][-1].weight, before)  # its head was trained
    assert "train/far_depth" in trainer.logged_metrics
    results = split_metrics(trainer.callback_metrics, module.net.task_names)
    assert 0 < results["far_depth"]["rmse"] < 20
    assert "far_depth rmse ↓" in format_table(results)

    # its prediction files: written and read back by the entry, values checked with the file named
    with torch.no_grad():
        logits = module.net(samples[0]["image"][None]).predictions["far_depth"]
    prediction = far_depth.to_numpy(far_depth.postprocess(logits))[0]
    path = tmp_path / "far_depth" / f"a{far_depth.suffix}"
    far_depth.write_prediction(prediction, path)
    torch.testing.assert_close(far_depth.read_prediction(path, (32, 48)), far_depth.postprocess(logits))
    far_depth.write_prediction(np.full((32, 48), np.nan, np.float32), path)
    with pytest.raises(ValueError, match=rf"prediction {path}: 1536 non-finite depths"):
        far_depth.read_prediction(path, (32, 48))


def test_prediction_files_are_checked_per_file(tmp_path):
    semseg = make_task("semseg", num_classes=40)
    path = tmp_path / "semseg" / "a.png"
    semseg.write_prediction(np.array([[1, 200]]), path)
    with pytest.raises(
        ValueError, match=rf"prediction {path}: class ids must lie in \[0, 40\), found \[200\]"
    ):
        semseg.read_prediction(path, (1, 2))
    with pytest.raises(ValueError, match=r"has shape \(1, 2\), expected \(2, 2\)"):
        semseg.read_prediction(path, (2, 2))
    normals = make_task("normals")
    path = tmp_path / "normals" / "a.npy"
    normals.write_prediction(np.zeros((1, 2, 3)), path)
    assert normals.read_prediction(path, (1, 2)).shape == (1, 3, 1, 2)
    with pytest.raises(FileNotFoundError, match="b.npy"):
        normals.read_prediction(tmp_path / "normals" / "b.npy", (1, 2))


def test_no_task_name_is_compared_outside_the_task_entries():
    import re
    from pathlib import Path

    import tiger

    pattern = re.compile(
        r"""(name|task|key)\s*(==|!=|in)\s*\(?\s*["'](semseg|human_parts|sal|edge|normals|depth)["']"""
    )
    offenders = [
        f"{path.name}:{number}"
        for path in Path(tiger.__file__).parent.rglob("*.py")
        if path.name != "tasks.py" and "data" not in path.parts[-2:-1]
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []
