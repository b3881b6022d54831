import math

import pytest
import torch
import torch.nn.functional as F

from tiger.training.losses import TigerLoss, causal_importance, jensen_shannon, pixel_loss, pool_to_grid, task_loss
from tiger.options import OptionError
from tiger.tasks import make_task


def test_jensen_shannon_matches_an_independent_computation():
    torch.manual_seed(0)
    p = torch.rand(5, 4, dtype=torch.float64).softmax(-1)
    q = torch.rand(5, 4, dtype=torch.float64).softmax(-1)
    m = (p + q) / 2
    kl = lambda a, b: (a * (a / b).log()).sum(-1)  # noqa: E731
    torch.testing.assert_close(jensen_shannon(p, q, dim=-1), 0.5 * kl(p, m) + 0.5 * kl(q, m))
    # with scipy's distance (the square root of the JSD in nats)
    scipy_distance = pytest.importorskip("scipy.spatial.distance")
    for row in range(5):
        expected = scipy_distance.jensenshannon(p[row].numpy(), q[row].numpy()) ** 2
        assert jensen_shannon(p[row], q[row], dim=0).item() == pytest.approx(expected, rel=1e-9)


def test_jensen_shannon_handles_zero_mass_and_is_bounded():
    p = torch.tensor([1.0, 0.0])
    q = torch.tensor([0.0, 1.0])
    assert jensen_shannon(p, q, dim=0).item() == pytest.approx(math.log(2))
    assert jensen_shannon(p, p, dim=0).item() == 0.0


def test_causal_importance_standardises_then_softmaxes():
    delta = torch.tensor([[1.0, 2.0, 6.0]])
    z = (delta - 3.0) / (torch.tensor([1.0, 2.0, 6.0]).std(unbiased=False) + 1e-6)
    expected = (z / 0.5).softmax(-1)
    torch.testing.assert_close(causal_importance(delta, tau=0.5, dim=1), expected)
    # invariant to the scale and offset of the losses
    torch.testing.assert_close(causal_importance(10 * delta + 3, tau=0.5, dim=1), expected, atol=1e-5, rtol=0)
    # the expert whose removal hurts most gets the most mass
    assert causal_importance(delta, tau=1.0, dim=1).argmax().item() == 2


def test_pool_to_grid_averages_over_valid_pixels_only():
    values = torch.tensor([[[1.0, 3.0, 10.0, 10.0], [5.0, 7.0, 10.0, 10.0]]])  # (1, 2, 4)
    weight = torch.tensor([[[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]])
    pooled, valid = pool_to_grid(values, weight, (1, 2))
    torch.testing.assert_close(pooled, torch.tensor([[[3.0, 0.0]]]))  # (1 + 3 + 5) / 3; no valid pixel
    assert valid.tolist() == [[[True, False]]]


def test_semseg_loss_ignores_255_and_means_over_valid_pixels():
    task = make_task("semseg", num_classes=3)
    logits = torch.zeros(1, 3, 1, 3)
    logits[0, 0, 0, 0] = 2.0
    target = torch.tensor([[[0, 255, 2]]])
    expected = (F.cross_entropy(logits[0, :, 0, 0][None], torch.tensor([0])) + math.log(3)) / 2
    assert task_loss(task, logits, target).item() == pytest.approx(expected.item())


def test_saliency_uses_batch_class_weights():
    task = make_task("sal")
    logits = torch.randn(1, 2, 2, 2)
    target = torch.tensor([[[1, 0], [0, 255]]])  # 1 positive, 2 negatives -> w = 2/3
    expected = F.cross_entropy(logits, target, weight=torch.tensor([1 / 3, 2 / 3]), ignore_index=255)
    assert task_loss(task, logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_edge_balanced_bce_by_hand():
    task = make_task("edge")
    logits = torch.tensor([[[[0.0, 2.0, -1.0]]]])
    target = torch.tensor([[[1.0, 0.0, 255.0]]])
    s = torch.sigmoid(torch.tensor([0.0, 2.0]))
    expected = (-(0.95 * torch.log(s[0])) - 0.05 * torch.log(1 - s[1])) / 2
    assert task_loss(task, logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_normals_l1_after_normalisation_and_depth_l1_skip_invalid():
    normals = make_task("normals")
    logits = torch.stack([torch.tensor([0.0, 0.0]), torch.tensor([0.0, 0.0]), torch.tensor([5.0, 1.0])])[
        None, :, None
    ]
    target = torch.stack([torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]), torch.tensor([0.0, 0.0])])[
        None, :, None
    ]
    # pixel 0: |(0,0,1) - (1,0,0)| summed = 2; pixel 1 invalid (zero target)
    assert task_loss(normals, logits, target).item() == pytest.approx(2.0)
    depth = make_task("depth")
    loss, weight = pixel_loss(depth, torch.tensor([[[[1.0, 3.0]]]]), torch.tensor([[[[2.0, 0.0]]]]))
    assert loss.tolist() == [[[1.0, 0.0]]] and weight.tolist() == [[[1.0, 0.0]]]


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"lambda_cf": -0.1}, r"^lambda_cf must be >= 0, got -0.1$"),  # once silently switched L_cf off
        ({"tau": 0}, r"^tau must be > 0, got 0$"),  # once NaN from step 0
        ({"tau": -1.0}, r"^tau must be > 0, got -1.0$"),  # once silently inverted the target
        ({"eps": 0.0}, r"^eps must be > 0, got 0.0$"),
        ({"tau": float("nan")}, r"^tau must be a finite number, got nan$"),
        ({"lambda_cf": "0.1"}, r"^lambda_cf must be a number, got '0.1' \(str\)$"),
    ],
)
def test_loss_settings_are_checked_where_they_enter(setting, message):
    with pytest.raises(OptionError, match=message):
        TigerLoss([make_task("depth")], **setting)
    assert TigerLoss([make_task("depth")], lambda_cf=0, tau=0.5).lambda_cf == 0.0  # 0 = L_cf off, allowed


def test_jensen_shannon_gradient_is_finite_when_alpha_saturates():
    logits = torch.tensor([0.0, 200.0, -200.0], requires_grad=True)  # softmax gives exact zeros
    q = logits.softmax(0)
    assert (q == 0).any()
    jensen_shannon(torch.tensor([0.2, 0.5, 0.3]), q, dim=0).backward()
    assert torch.isfinite(logits.grad).all()
