import pytest
import torch

from tiger.tasks import TASK_NAMES, make_task, palette


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
