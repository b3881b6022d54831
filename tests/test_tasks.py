import pytest
import torch

from tiger.tasks import TASK_NAMES, make_task, metric_target, palette, unit_vectors


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
