"""Streaming dense-prediction metrics (PROTOCOL.md section 4): counts pooled over the whole data set.

Every state is a sum registered with ``dist_reduce_fx="sum"``, so torchmetrics adds the states of all
processes before ``compute()``: under DDP the result equals the single-process one, and it never averages
per image. Each ``update`` takes a batch or a single sample (the same shapes without the batch dim), so a
saved-prediction folder can be scored one image at a time.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import MulticlassConfusionMatrix

from tiger.tasks.targets import IGNORE_INDEX, unit_vectors

SALIENCY_THRESHOLDS = torch.arange(1, 20, dtype=torch.float64) / 20  # 0.05, 0.10, ..., 0.95
NORMAL_ANGLES = (11.25, 22.5, 30.0)


def _check_pair(
    name: str, prediction: Tensor, target: Tensor, sample_dims: int, channels: int | None = None
) -> None:
    """Same shape, a batch (sample_dims + 1 dims) or one sample (sample_dims dims), the expected channels."""
    if prediction.shape != target.shape or prediction.ndim not in (sample_dims, sample_dims + 1):
        raise ValueError(
            f"{name}: prediction {tuple(prediction.shape)} and target {tuple(target.shape)} must have one "
            "shape, "
            f"{sample_dims + 1}-D (batch) or {sample_dims}-D (one sample)"
        )
    if channels is not None and prediction.shape[-3] != channels:
        raise ValueError(
            f"{name}: expected {channels} channels (dim -3), got shape {tuple(prediction.shape)}"
        )


class MeanIoU(MulticlassConfusionMatrix):
    """mIoU for semseg and human parts (x100), from torchmetrics' confusion matrix pooled over the data set
    (a sum state: exact under DDP).

    Per class ``tp / (tp + fp + fn)`` over the pixels whose label is not ``ignore_index``, then the mean
    over all ``num_classes`` classes. A class absent from both labels and predictions has a zero
    denominator and counts as 0, as in the reference evaluation (``tp / max(tp + fp + fn, 1e-8)`` averaged
    over every class). Also the pixel accuracy.

    ``update(prediction, target)``: (B, H, W) or (H, W) integer class maps; target 255 = ignore.
    """

    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        super().__init__(num_classes, ignore_index=ignore_index, validate_args=False)

    def update(self, prediction: Tensor, target: Tensor) -> None:
        _check_pair("MeanIoU", prediction, target, sample_dims=2)
        if prediction.is_floating_point() or target.is_floating_point():
            raise ValueError(f"MeanIoU needs integer class maps, got {prediction.dtype} and {target.dtype}")
        valid = target != self.ignore_index
        for label, values in (("target", target[valid]), ("prediction", prediction[valid])):
            if values.numel() and (values.min() < 0 or values.max() >= self.num_classes):
                raise ValueError(
                    f"MeanIoU: {label} labels must be in [0, {self.num_classes}) or {self.ignore_index} "
                    "(ignore), "
                    f"got range [{int(values.min())}, {int(values.max())}]"
                )
        super().update(prediction.long(), target.long())

    def compute(self) -> dict[str, Tensor]:
        confusion = self.confmat.double()  # rows: target, columns: prediction
        tp = confusion.diag()
        union = confusion.sum(0) + confusion.sum(1) - tp
        iou = tp / union.clamp_min(1e-8)
        return {"mIoU": 100 * iou.mean(), "pixel_acc": 100 * tp.sum() / confusion.sum().clamp_min(1)}


class DepthRMSE(Metric):
    """Depth errors over pixels with ground truth > 0, pooled: RMSE ``sqrt(sum (gt - pred)^2 / N_valid)``
    (metres), log-RMSE ``sqrt(mean (log gt - log pred)^2)`` and the mean absolute relative error.
    Predictions are clamped to >= 1e-9 m (positive).

    ``update(prediction, target)``: (B, 1, H, W) or (1, H, W) metres; target 0 = invalid.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("squared", "log_squared", "abs_rel", "count"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, prediction: Tensor, target: Tensor) -> None:
        _check_pair("DepthRMSE", prediction, target, sample_dims=3, channels=1)
        if not torch.isfinite(target).all() or not torch.isfinite(prediction).all():
            raise ValueError("DepthRMSE: depth maps must be finite (0 marks an invalid target pixel)")
        valid = target > 0
        gt = target[valid].double()
        pred = prediction[valid].double().clamp_min(1e-9)
        self.squared += ((gt - pred) ** 2).sum()
        self.log_squared += ((gt.log() - pred.log()) ** 2).sum()
        self.abs_rel += ((gt - pred).abs() / gt).sum()
        self.count += gt.numel()

    def compute(self) -> dict[str, Tensor]:
        count = self.count.clamp_min(1)
        return {
            "rmse": (self.squared / count).sqrt(),
            "log_rmse": (self.log_squared / count).sqrt(),
            "abs_rel": self.abs_rel / count,
        }


class NormalsError(Metric):
    """Surface-normal angular error in degrees between the unit prediction and the unit target,
    ``2 atan2(|p - g|, |p + g|)`` (accurate at 0 and 180 degrees, unlike ``arccos``), over pixels whose
    target is not all-zero: mean (mErr), median, RMSE and the % of pixels within 11.25 / 22.5 / 30 degrees.

    The median needs every angle; they are kept as a histogram of 0.01-degree bins (the reported median is
    the centre of its bin: within 0.005 degree), which sums across processes like the other states.
    ``update(prediction, target)``: (B, 3, H, W) or (3, H, W).
    """

    full_state_update = False
    bins = 18000  # 0.01 degree

    def __init__(self) -> None:
        super().__init__()
        for name in ("total", "squared", "count"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("histogram", torch.zeros(self.bins, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, prediction: Tensor, target: Tensor) -> None:
        _check_pair("NormalsError", prediction, target, sample_dims=3, channels=3)
        if prediction.ndim == 3:
            prediction, target = prediction[None], target[None]
        valid = target.abs().sum(1) > 0
        p = unit_vectors(prediction.double()).permute(0, 2, 3, 1)[valid]
        g = unit_vectors(target.double()).permute(0, 2, 3, 1)[valid]
        angle = torch.rad2deg(2 * torch.atan2((p - g).norm(dim=1), (p + g).norm(dim=1)))
        self.total += angle.sum()
        self.squared += (angle**2).sum()
        self.count += angle.numel()
        index = (angle * self.bins / 180).long().clamp(0, self.bins - 1)
        self.histogram += torch.bincount(index, minlength=self.bins)

    def compute(self) -> dict[str, Tensor]:
        count = self.count.clamp_min(1)
        cumulative = self.histogram.cumsum(0).double()
        median_bin = torch.searchsorted(cumulative, count / 2)
        results = {
            "mErr": self.total / count,
            "median": (median_bin.double() + 0.5) * 180 / self.bins,
            "rmse": (self.squared / count).sqrt(),
        }
        for limit in NORMAL_ANGLES:  # angle < limit
            within = self.histogram[: int(round(limit * self.bins / 180))].sum()
            results[f"within_{limit:g}"] = 100 * within / count
        return results


class SaliencyMaxF(Metric):
    """Saliency maxF (x100): the foreground probability thresholded at 0.05, 0.10, ..., 0.95 (positive where
    ``p >= t``); F = (1 + b2) P R / (b2 P + R), b2 = 0.3, from TP / predicted / actual pooled over the data
    set; the max over thresholds. Also ``IoU``: the pooled foreground IoU of the map thresholded at 0.5.

    ``double_sigmoid=True`` reproduces InvPT, TaskPrompter, MLoRE and MTMamba, which pass the probability
    through a sigmoid a second time before thresholding (thresholds >= 0.75 then predict nothing); their
    published numbers depend on it. Off by default: say which one a report used.
    ``update(prediction, target)``: (B, H, W) or (H, W) probability in [0, 1]; target {0, 1}, 255 = ignore.
    """

    full_state_update = False
    beta_squared = 0.3

    def __init__(self, double_sigmoid: bool = False) -> None:
        super().__init__()
        self.double_sigmoid = double_sigmoid
        n = len(SALIENCY_THRESHOLDS)
        for name in ("true_positive", "predicted"):
            self.add_state(name, torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("actual", "intersection", "union"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, prediction: Tensor, target: Tensor) -> None:
        _check_pair("SaliencyMaxF", prediction, target, sample_dims=2)
        valid = target != IGNORE_INDEX
        labels = target[valid]
        if labels.numel() and not ((labels == 0) | (labels == 1)).all():
            raise ValueError(
                f"SaliencyMaxF: target must be in {{0, 1, 255}}, got values {labels.unique()[:10].tolist()}"
            )
        probability = prediction[valid].double()
        if probability.numel() and (
            probability.min() < 0 or probability.max() > 1 or probability.isnan().any()
        ):
            raise ValueError("SaliencyMaxF: the prediction must be a foreground probability in [0, 1]")
        if self.double_sigmoid:
            probability = probability.sigmoid()
        truth = labels == 1
        positive = probability[:, None] >= SALIENCY_THRESHOLDS.to(probability.device)[None]
        self.true_positive += (positive & truth[:, None]).sum(0)
        self.predicted += positive.sum(0)
        self.actual += truth.sum()
        half = probability >= 0.5
        self.intersection += (half & truth).sum()
        self.union += (half | truth).sum()

    def compute(self) -> dict[str, Tensor]:
        precision = self.true_positive / self.predicted.clamp_min(1e-12)
        recall = self.true_positive / self.actual.clamp_min(1e-12)
        b2 = self.beta_squared
        f = (1 + b2) * precision * recall / (b2 * precision + recall).clamp_min(1e-12)
        return {"maxF": 100 * f.max(), "IoU": 100 * self.intersection / self.union.clamp_min(1)}
