"""Dense metrics against hand-computed cases; pooling across updates and across processes."""

import math

import pytest
import torch

from tiger.metrics import DepthRMSE, MeanIoU, NormalsError, SaliencyMaxF


def test_miou_by_hand_with_ignored_pixels():
    target = torch.tensor([[[0, 0, 1, 1, 255, 2]]])
    prediction = torch.tensor([[[0, 1, 1, 1, 2, 0]]])
    metric = MeanIoU(3)
    metric.update(prediction, target)
    # class 0: tp 1, fp 1 (last pixel), fn 1 -> 1/3; class 1: tp 2, fp 1 -> 2/3; class 2: tp 0, fn 1 -> 0
    assert metric.compute()["mIoU"].item() == pytest.approx(100 * (1 / 3 + 2 / 3 + 0) / 3)
    assert metric.compute()["pixel_acc"].item() == pytest.approx(100 * 3 / 5)


def test_counts_pool_across_updates_and_processes():
    torch.manual_seed(0)
    target = torch.randint(0, 4, (4, 8, 8))
    prediction = torch.randint(0, 4, (4, 8, 8))
    whole = MeanIoU(4)
    whole.update(prediction, target)
    first, second = MeanIoU(4), MeanIoU(4)  # two "processes", each with half the data
    first.update(prediction[:2], target[:2])
    second.update(prediction[2:], target[2:])
    first.merge_state(second)  # what torchmetrics' sync does with the "sum" reductions
    torch.testing.assert_close(first.compute()["mIoU"], whole.compute()["mIoU"])
    per_image = [MeanIoU(4) for _ in range(4)]
    for i, metric in enumerate(per_image):
        metric.update(prediction[i : i + 1], target[i : i + 1])
    mean_of_images = sum(m.compute()["mIoU"] for m in per_image) / 4
    assert not torch.isclose(mean_of_images, whole.compute()["mIoU"])  # pooled, never averaged per image


def test_depth_rmse_and_log_rmse_by_hand():
    target = torch.tensor([[[[1.0, 2.0, 0.0, 4.0]]]])
    prediction = torch.tensor([[[[2.0, 2.0, 9.0, -1.0]]]])  # the third pixel is invalid; -1 is clamped
    metric = DepthRMSE()
    metric.update(prediction, target)
    values = metric.compute()
    assert values["rmse"].item() == pytest.approx(math.sqrt((1 + 0 + 16) / 3), rel=1e-6)
    log_terms = [math.log(1 / 2) ** 2, 0.0, (math.log(4) - math.log(1e-9)) ** 2]
    assert values["log_rmse"].item() == pytest.approx(math.sqrt(sum(log_terms) / 3), rel=1e-6)


def test_normals_error_angles_and_thresholds():
    target = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]).view(1, 3, 1, 4)
    prediction = torch.tensor([[1.0, 0.0, 1.0, 5.0], [0.0, 1.0, 1.0, 5.0], [0.0, 0.0, 0.0, 5.0]]).view(
        1, 3, 1, 4
    )
    metric = NormalsError()
    metric.update(prediction, target)
    values = metric.compute()  # angles 0, 90, 45 (the last pixel is invalid)
    assert values["mErr"].item() == pytest.approx(45.0, abs=1e-6)
    assert values["rmse"].item() == pytest.approx(math.sqrt((0 + 90**2 + 45**2) / 3), abs=1e-6)
    assert values["within_11.25"].item() == pytest.approx(100 / 3)
    assert values["within_30"].item() == pytest.approx(100 / 3)
    assert values["median"].item() == pytest.approx(45.0, abs=0.01)


def test_normals_formula_equals_arccos_on_random_unit_vectors():
    torch.manual_seed(1)
    p = torch.nn.functional.normalize(torch.randn(1, 3, 5, 5, dtype=torch.float64), dim=1)
    g = torch.nn.functional.normalize(torch.randn(1, 3, 5, 5, dtype=torch.float64), dim=1)
    metric = NormalsError()
    metric.update(p, g)
    expected = torch.rad2deg(torch.arccos((p * g).sum(1).clamp(-1, 1))).mean()
    assert metric.compute()["mErr"].item() == pytest.approx(expected.item(), abs=1e-6)


def test_saliency_maxf_by_hand_and_the_double_sigmoid_quirk():
    probability = torch.tensor([[0.9, 0.6, 0.3, 0.1, 0.8]])
    target = torch.tensor([[1, 1, 0, 0, 255]])
    metric = SaliencyMaxF()
    metric.update(probability, target)
    # thresholds 0.35..0.60 keep exactly the two positives: P = R = 1 -> F = 1
    assert metric.compute()["maxF"].item() == pytest.approx(100.0)
    # by hand at t = 0.7: TP 1, predicted 1, actual 2 -> P 1, R 0.5, F = 1.3 * 0.5 / (0.3 + 0.5)
    low = SaliencyMaxF()
    low.update(torch.tensor([[0.9, 0.1, 0.1, 0.1]]), torch.tensor([[1, 1, 0, 0]]))
    assert low.compute()["maxF"].item() == pytest.approx(100 * 1.3 * 0.5 / 0.8)
    quirk = SaliencyMaxF(double_sigmoid=True)
    quirk.update(torch.tensor([[1.0, 1.0, 0.0, 0.0]]), torch.tensor([[1, 1, 0, 0]]))
    # sigmoid(1) = 0.731, sigmoid(0) = 0.5: t in 0.55..0.70 keeps only the positives; t >= 0.75 keeps nothing
    assert quirk.compute()["maxF"].item() == pytest.approx(100.0)
    quirk_high = SaliencyMaxF(double_sigmoid=True)
    quirk_high.update(torch.tensor([[0.2, 0.2, 0.0, 0.0]]), torch.tensor([[1, 1, 0, 0]]))
    # sigmoid(0.2) = 0.5498, sigmoid(0) = 0.5: t = 0.50 keeps both, t = 0.55 keeps neither
    clean = SaliencyMaxF()
    clean.update(torch.tensor([[0.2, 0.2, 0.0, 0.0]]), torch.tensor([[1, 1, 0, 0]]))
    assert clean.compute()["maxF"].item() == pytest.approx(100.0)  # t in 0.05..0.20 separates them
    assert quirk_high.compute()["maxF"].item() < 100.0  # after the second sigmoid no threshold does


def test_saliency_f_at_every_threshold_by_hand():
    probability = torch.tensor([[0.92, 0.71, 0.48, 0.33, 0.12, 0.66]])
    target = torch.tensor([[1, 1, 1, 0, 0, 0]])
    metric = SaliencyMaxF()
    metric.update(probability, target)
    expected = []
    for t in [k / 20 for k in range(1, 20)]:
        positive = [p >= t for p in probability[0].tolist()]
        tp = sum(pos and y == 1 for pos, y in zip(positive, target[0].tolist(), strict=True))
        predicted, actual = sum(positive), 3
        p, r = (tp / predicted if predicted else 0.0), tp / actual
        expected.append(1.3 * p * r / (0.3 * p + r) if tp else 0.0)
    assert metric.true_positive.tolist()[:3] == [3, 3, 3]  # t = 0.05, 0.10, 0.15 keep every pixel
    assert metric.compute()["maxF"].item() == pytest.approx(100 * max(expected))
    # the 0.5-thresholded map: {0.92, 0.71, 0.66} vs {0.92, 0.71, 0.48} -> IoU 2 / 4
    assert metric.compute()["IoU"].item() == pytest.approx(50.0)


def test_double_sigmoid_predicts_nothing_from_threshold_075():
    metric = SaliencyMaxF(double_sigmoid=True)
    metric.update(torch.ones(1, 4, 4), torch.ones(1, 4, 4, dtype=torch.int64))  # sigmoid(1) = 0.731
    thresholds = torch.arange(1, 20) / 20
    assert metric.predicted[thresholds >= 0.75].sum() == 0
    assert (metric.predicted[thresholds < 0.73] == 16).all()


def test_depth_abs_rel_and_bad_input():
    metric = DepthRMSE()
    metric.update(
        torch.tensor([[[2.0, 3.0, 5.0]]]), torch.tensor([[[1.0, 4.0, 0.0]]])
    )  # one (1, H, W) sample
    assert metric.compute()["abs_rel"].item() == pytest.approx((1 / 1 + 1 / 4) / 2)
    with pytest.raises(ValueError, match="finite"):
        metric.update(torch.tensor([[[float("nan")]]]), torch.tensor([[[1.0]]]))
    with pytest.raises(ValueError, match="1 channels"):
        metric.update(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3))


def test_miou_rejects_labels_out_of_range_and_takes_single_samples():
    metric = MeanIoU(3)
    with pytest.raises(ValueError, match="prediction labels must be in"):
        metric.update(torch.tensor([[0, 3]]), torch.tensor([[0, 1]]))
    single, batch = MeanIoU(3), MeanIoU(3)
    single.update(torch.tensor([[0, 1], [2, 2]]), torch.tensor([[0, 1], [1, 255]]))
    batch.update(torch.tensor([[[0, 1], [2, 2]]]), torch.tensor([[[0, 1], [1, 255]]]))
    torch.testing.assert_close(single.compute()["mIoU"], batch.compute()["mIoU"])


@pytest.mark.parametrize("name", ["depth", "normals", "sal"])
def test_every_dense_state_sums_across_processes(name):
    torch.manual_seed(2)
    if name == "depth":
        make, prediction, target = (
            DepthRMSE,
            torch.rand(4, 1, 6, 6) + 0.1,
            torch.rand(4, 1, 6, 6) * (torch.rand(4, 1, 6, 6) > 0.3),
        )
    elif name == "normals":
        make, prediction, target = NormalsError, torch.randn(4, 3, 6, 6), torch.randn(4, 3, 6, 6)
    else:
        make, prediction, target = SaliencyMaxF, torch.rand(4, 6, 6), (torch.rand(4, 6, 6) > 0.5).long()
    whole, first, second = make(), make(), make()
    whole.update(prediction, target)
    first.update(prediction[:1], target[:1])
    second.update(prediction[1:], target[1:])
    first.merge_state(second)
    for key, value in whole.compute().items():
        torch.testing.assert_close(first.compute()[key], value, msg=key)
