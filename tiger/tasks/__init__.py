"""One entry per dense prediction task: everything that differs between tasks lives here.

An entry is a :class:`Task` of one *kind* (:class:`Classification`, :class:`Saliency`, :class:`Boundary`,
:class:`Normals`, :class:`Depth`); the kind owns the task's per-pixel loss, post-processing, metric,
prediction file format (write and read), colour picture, padding value, valid mask, random targets,
its data-set target tensors and the conversion to the user's units. The rest of the package only
calls these methods, never compares task names. Adding a task means registering one entry (and giving
it a config)::

    register_task(Depth("depth_far", channels=1, instruction="Estimate the distance ...", title="Far RMSE"))

Target formats in a batch (the key is the task name; ``255`` / zero marks pixels to ignore):

============  ==================  ===========  ==========================================
task          target              dtype        ignored where
============  ==================  ===========  ==========================================
semseg        (B, H, W)           int64        == 255
human_parts   (B, H, W)           int64        == 255
sal           (B, H, W)           int64 {0,1}  == 255
edge          (B, H, W)           float {0,1}  == 255
depth         (B, 1, H, W)        float (m)    == 0
normals       (B, 3, H, W)        float        all three components == 0
============  ==================  ===========  ==========================================

A task of :data:`METRIC_TARGET_KEYS` is scored against another ground truth than its training target:
``edge`` against ``edge_seism`` (B, H, W) uint8 {0, 1}, 255 = padding, SEISM's ``seg2bmap`` of the
data set's label image (:func:`metric_target` picks it).

Model outputs are raw logits (B, C, H, W) with ``C = Task.channels``; :meth:`Task.postprocess` turns
them into predictions (class maps, metres, unit normals, probabilities), which is what the metrics
consume; :meth:`Task.to_numpy` gives the per-image layout users get (and the files hold).

This module is the bottom of the package: it imports torch, numpy and PIL only (the metrics, and
matplotlib for the depth colours, on first use).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from tiger.tasks import colors
from tiger.tasks.colors import palette
from tiger.tasks.targets import IGNORE_INDEX, unit_vectors

if TYPE_CHECKING:
    from torchmetrics import Metric

__all__ = [
    "DEFAULT_INSTRUCTIONS",
    "IGNORE_INDEX",
    "NUM_HUMAN_PARTS",
    "TASKS",
    "TASK_NAMES",
    "Boundary",
    "Classification",
    "Depth",
    "Normals",
    "Saliency",
    "Task",
    "get_task",
    "make_task",
    "palette",
    "register_task",
    "unit_vectors",
]

NUM_HUMAN_PARTS = 7
EDGE_POSITIVE_WEIGHT = 0.95

METRIC_TARGET_KEYS: dict[str, str] = {"edge": "edge_seism"}
"""Task -> the batch key of its metric's ground truth, where that is not the training target."""


def metric_target(task_name: str, batch: Mapping[str, Any]) -> Tensor:
    """The ground truth that ``task_name``'s metric scores against: ``batch[METRIC_TARGET_KEYS[task]]`` or
    ``batch[task]``. A missing key is a ``KeyError`` naming it (never a silent fall-back)."""
    key = METRIC_TARGET_KEYS.get(task_name, task_name)
    if key not in batch:
        raise KeyError(
            f"the batch has no {key!r}, the metric ground truth of task {task_name!r}; it has keys "
            f"{sorted(batch)} (the data sets of tiger.data provide it)"
        )
    return batch[key]


@dataclass(frozen=True)
class Task:
    """A dense prediction task (the base of the kinds below; not registered itself).

    Attributes:
        name: the key of its targets and predictions.
        channels: number of output channels of its head (0 in an entry whose channels come from the data
            set: semseg, see :func:`make_task`).
        instruction: the natural-language instruction embedded by Sentence-BERT (eq. 3).
        weight: its lambda_j in the total loss (eq. 14).
        title: its column title in results tables (default ``"<name> <main_metric>"``).
    """

    name: str
    channels: int
    instruction: str
    weight: float = 1.0
    title: str = ""

    #: metric key of the task's main result, whether higher is better, and its decimals in tables
    main_metric: ClassVar[str]
    higher_is_better: ClassVar[bool]
    decimals: ClassVar[int] = 2
    #: the value that marks a padded (ignored) target pixel
    pad_value: ClassVar[float] = IGNORE_INDEX
    #: the saved-prediction file suffix
    suffix: ClassVar[str] = ".png"
    is_classification: ClassVar[bool] = False

    # --- targets -----------------------------------------------------------------------------------
    def valid_mask(self, target: Tensor) -> Tensor:
        """Target in the format above -> boolean mask (B, H, W) of the pixels that count."""
        return target != IGNORE_INDEX

    def random_target(
        self, batch: int, size: tuple[int, int], generator: torch.Generator | None = None
    ) -> Tensor:
        """A random valid target batch of ``size`` (benchmarks, tests)."""
        raise NotImplementedError

    def target_tensor(self, array: np.ndarray) -> Tensor:
        """A data set's numpy target (H, W[, C]) -> one sample's target tensor in the format above."""
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))

    def rescale_target(self, array: np.ndarray, scale: float) -> np.ndarray:
        """A target resized (nearest) by ``scale`` -> its values after the zoom (unchanged but for depth)."""
        return array

    def flip_target(self, array: np.ndarray) -> np.ndarray:
        """A target mirrored left-right -> its values in the mirrored frame (unchanged but for normals)."""
        return array

    def ignore_whole_target(self, array: np.ndarray) -> bool:
        """Whether a sample's target carries no information and is ignored entirely (human parts)."""
        return False

    # --- predictions -------------------------------------------------------------------------------
    def pixel_loss(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """The reference per-pixel loss (PROTOCOL.md section 3).

        Args:
            logits: the head output (B, C, H, W).
            target: the target in the format above.

        Returns:
            loss: (B, H, W), zero on ignored pixels.
            weight: (B, H, W), zero on ignored pixels; the task loss is ``sum(loss * weight) / sum(weight)``
            (all ones on valid pixels, except for saliency's class weights).
        """
        raise NotImplementedError

    def postprocess(self, logits: Tensor) -> Tensor:
        """Raw head output (B, C, H, W) -> prediction batch in the metric's format."""
        raise NotImplementedError

    def to_numpy(self, prediction: Tensor) -> np.ndarray:
        """:meth:`postprocess` output -> numpy (B, ...) in the per-image layout of the user's units."""
        return prediction.detach().float().cpu().numpy()

    def from_numpy(self, array: np.ndarray) -> Tensor:
        """One image in the user's layout -> a batch of one in the format of :meth:`postprocess`."""
        return torch.from_numpy(np.asarray(array, dtype=np.float32))[None]

    def metric(self, dataset: str) -> Metric:
        """The protocol metric of the task on ``dataset`` (a kind's metric options are fields of the kind)."""
        raise NotImplementedError

    def colorize(self, prediction: np.ndarray, **style) -> np.ndarray:
        """One image's prediction or target (user layout) -> RGB picture (H, W, 3) uint8."""
        raise NotImplementedError

    def write_prediction(self, prediction: np.ndarray, path: str | Path) -> None:
        """Save one image's prediction (user layout) in the saved-prediction format (:attr:`suffix`)."""
        raise NotImplementedError

    def load_prediction(self, path: Path) -> np.ndarray:
        """Read one file in the format of :meth:`write_prediction` (in the user layout)."""
        raise NotImplementedError

    def read_prediction(self, path: str | Path, size: tuple[int, int]) -> Tensor:
        """One saved prediction of an image of ``size`` -> a batch of one in the format of
        :meth:`postprocess`. Errors name the file: missing, unreadable, wrong size or invalid values."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no prediction file {path}")
        try:
            array = self.load_prediction(path)
        except (OSError, ValueError, EOFError) as error:
            raise ValueError(f"cannot read prediction {path}: {error}") from error
        expected = self.prediction_shape(size)
        if array.shape != expected:
            raise ValueError(
                f"prediction {path} has shape {array.shape}, expected {expected} (the image size)"
            )
        problem = self.check_prediction(array)
        if problem:
            raise ValueError(f"prediction {path}: {problem}")
        return self.from_numpy(array)

    def prediction_shape(self, size: tuple[int, int]) -> tuple[int, ...]:
        """The user-layout shape of one image's prediction at ``size`` (H, W)."""
        return tuple(size)

    def check_prediction(self, array: np.ndarray) -> str | None:
        """What is wrong with the values of one image's prediction, or None."""
        return None


def _save_png(array: np.ndarray, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode="L").save(path)


def _load_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        if image.mode not in ("L", "P"):
            raise ValueError(f"expected a single-channel 8-bit PNG, got mode {image.mode}")
        return np.asarray(image)


def _save_npy(array: np.ndarray, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array.astype(np.float32))


def _load_npy(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


@dataclass(frozen=True)
class Classification(Task):
    """Per-pixel classification (semseg, human parts): cross-entropy, class map, mIoU, uint8 PNG.

    Attributes:
        ignore_without_foreground: ignore a sample's whole target when it holds only class 0 and 255 (the
            reference code does so for human parts: no visible person part).
    """

    ignore_without_foreground: bool = False

    main_metric: ClassVar[str] = "mIoU"
    higher_is_better: ClassVar[bool] = True
    is_classification: ClassVar[bool] = True

    def random_target(self, batch, size, generator=None):
        return torch.randint(0, self.channels, (batch, *size), generator=generator)

    def ignore_whole_target(self, array):
        return self.ignore_without_foreground and bool(((array == 0) | (array == IGNORE_INDEX)).all())

    def pixel_loss(self, logits, target):
        weight = self.valid_mask(target).to(logits.dtype)
        loss = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="none")
        return loss * weight.ne(0), weight

    def postprocess(self, logits):
        """(B, H, W) int64 class map."""
        return logits.argmax(1)

    def to_numpy(self, prediction):
        return prediction.detach().long().cpu().numpy()

    def from_numpy(self, array):
        return torch.from_numpy(np.asarray(array, dtype=np.int64))[None]

    def metric(self, dataset):
        from tiger.metrics.dense import MeanIoU

        return MeanIoU(self.channels)

    def colorize(self, prediction, **style):
        return colors.classes_rgb(self.name, prediction, self.channels or IGNORE_INDEX, **style)

    def write_prediction(self, prediction, path):
        if prediction.min(initial=0) < 0 or prediction.max(initial=0) > 255:
            raise ValueError(f"{self.name}: class ids outside [0, 255] cannot be stored as uint8 PNG")
        _save_png(prediction.astype(np.uint8), path)

    def load_prediction(self, path):
        return _load_png(path)

    def check_prediction(self, array):
        if self.channels and array.max(initial=0) >= self.channels:
            found = np.unique(array[array >= self.channels])[:8].tolist()
            return f"class ids must lie in [0, {self.channels}), found {found}"
        return None


@dataclass(frozen=True)
class _Probability(Task):
    """A per-pixel probability saved as a uint8 PNG of ``floor(p * 255)``."""

    def colorize(self, prediction, **style):
        return colors.probability_rgb(self.name, prediction, **style)

    def write_prediction(self, prediction, path):
        _save_png(np.clip(np.floor(prediction.astype(np.float64) * 255.0), 0, 255).astype(np.uint8), path)

    def load_prediction(self, path):
        return _load_png(path).astype(np.float32) / np.float32(255.0)


@dataclass(frozen=True)
class Saliency(_Probability):
    """Salient-object detection: class-balanced cross-entropy over {0, 1}, foreground probability, maxF.

    Attributes:
        double_sigmoid: score maxF as InvPT / TaskPrompter / MLoRE / MTMamba do (a sigmoid applied twice),
            the quirk their published numbers depend on; False (default): the clean definition.
    """

    double_sigmoid: bool = False

    main_metric: ClassVar[str] = "maxF"
    higher_is_better: ClassVar[bool] = True

    def random_target(self, batch, size, generator=None):
        return torch.randint(0, 2, (batch, *size), generator=generator)

    def pixel_loss(self, logits, target):
        valid = self.valid_mask(target)
        loss = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="none")
        positive = (target == 1) & valid
        w = 1.0 - positive.sum() / valid.sum().clamp_min(1)  # w = #neg / #valid over the batch
        weight = torch.where(positive, w, 1.0 - w) * valid.to(logits.dtype)  # class weights [1 - w, w]
        return loss * weight.ne(0), weight

    def postprocess(self, logits):
        """(B, H, W) foreground probability."""
        return logits.softmax(1)[:, 1]

    def metric(self, dataset):
        from tiger.metrics.dense import SaliencyMaxF

        return SaliencyMaxF(double_sigmoid=self.double_sigmoid)


@dataclass(frozen=True)
class Boundary(_Probability):
    """Boundary detection: balanced BCE (positive weight 0.95), boundary probability, ODS-F.

    Attributes:
        workers: processes that match the boundaries of a batch's images (the SEISM protocol is costly).
        matching: ``"bsds"`` (default) the reference matcher's assignment, ``"maximum"`` an exact
            maximum-cardinality matching, about 8x faster and a few hundredths of a point higher
            (:mod:`tiger.metrics.boundary`).
    """

    workers: int = 1
    matching: str = "bsds"

    main_metric: ClassVar[str] = "odsF"
    higher_is_better: ClassVar[bool] = True

    def random_target(self, batch, size, generator=None):
        return (torch.rand(batch, *size, generator=generator) > 0.9).float()

    def target_tensor(self, array):
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

    def pixel_loss(self, logits, target):
        valid = self.valid_mask(target)
        x, y = logits[:, 0], torch.where(valid, target, 0.0)
        w = EDGE_POSITIVE_WEIGHT  # balanced BCE: -(w y log s + (1 - w)(1 - y) log(1 - s))
        loss = w * y * F.softplus(-x) + (1 - w) * (1 - y) * F.softplus(x)
        weight = valid.to(logits.dtype)
        return loss * weight.ne(0), weight

    def postprocess(self, logits):
        """(B, H, W) boundary probability."""
        return logits.sigmoid()[:, 0]

    def metric(self, dataset):
        from tiger.metrics.boundary import BOUNDARY_MAX_DIST, BoundaryF

        return BoundaryF(BOUNDARY_MAX_DIST[dataset], workers=self.workers, matching=self.matching)


@dataclass(frozen=True)
class Normals(Task):
    """Surface normals: L1 between unit vectors, mean angular error; (H, W, 3) float32 ``.npy``."""

    main_metric: ClassVar[str] = "mErr"
    higher_is_better: ClassVar[bool] = False
    pad_value: ClassVar[float] = 0.0
    suffix: ClassVar[str] = ".npy"

    def valid_mask(self, target):
        return target.abs().sum(1) > 0

    def random_target(self, batch, size, generator=None):
        return unit_vectors(torch.randn(batch, self.channels, *size, generator=generator))

    def target_tensor(self, array):
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1), np.float32))

    def flip_target(self, array):
        array = array.copy()
        array[..., 0] *= -1.0  # the x component changes sign
        return array

    def pixel_loss(self, logits, target):
        weight = self.valid_mask(target).to(logits.dtype)
        loss = (unit_vectors(logits) - target).abs().sum(1)
        return loss * weight.ne(0), weight

    def postprocess(self, logits):
        """(B, 3, H, W) unit vectors."""
        return unit_vectors(logits)

    def to_numpy(self, prediction):
        return prediction.detach().float().cpu().permute(0, 2, 3, 1).numpy()

    def from_numpy(self, array):
        return torch.from_numpy(np.asarray(array, dtype=np.float32)).permute(2, 0, 1)[None]

    def metric(self, dataset):
        from tiger.metrics.dense import NormalsError

        return NormalsError()

    def colorize(self, prediction, **style):
        return colors.normals_rgb(self.name, prediction, **style)

    def write_prediction(self, prediction, path):
        _save_npy(prediction, path)

    def load_prediction(self, path):
        return _load_npy(path)

    def prediction_shape(self, size):
        return (*size, self.channels)

    def check_prediction(self, array):
        if not np.isfinite(array).all():
            return f"{int((~np.isfinite(array)).sum())} non-finite values (NaN or inf)"
        return None


@dataclass(frozen=True)
class Depth(Task):
    """Metric depth: L1 over valid (> 0) pixels, metres, RMSE; (H, W) float32 ``.npy``."""

    main_metric: ClassVar[str] = "rmse"
    higher_is_better: ClassVar[bool] = False
    decimals: ClassVar[int] = 4
    pad_value: ClassVar[float] = 0.0
    suffix: ClassVar[str] = ".npy"

    def valid_mask(self, target):
        return target[:, 0] > 0

    def random_target(self, batch, size, generator=None):
        return torch.rand(batch, 1, *size, generator=generator) * 5 + 0.5

    def target_tensor(self, array):
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]

    def rescale_target(self, array, scale):
        return array / np.float32(scale)  # zooming in by s brings the scene s times closer

    def pixel_loss(self, logits, target):
        weight = self.valid_mask(target).to(logits.dtype)
        loss = (logits - target).abs()[:, 0]
        return loss * weight.ne(0), weight

    def postprocess(self, logits):
        """(B, 1, H, W) metres, clamped to be positive."""
        return logits.clamp_min(1e-6)

    def to_numpy(self, prediction):
        return prediction.detach().float().cpu()[:, 0].numpy()

    def from_numpy(self, array):
        return torch.from_numpy(np.asarray(array, dtype=np.float32))[None, None]

    def metric(self, dataset):
        from tiger.metrics.dense import DepthRMSE

        return DepthRMSE()

    def colorize(self, prediction, **style):
        return colors.depth_rgb(self.name, prediction, **style)

    def write_prediction(self, prediction, path):
        _save_npy(prediction, path)

    def load_prediction(self, path):
        return _load_npy(path)

    def check_prediction(self, array):
        if not np.isfinite(array).all():
            return f"{int((~np.isfinite(array)).sum())} non-finite depths (NaN or inf)"
        if array.min(initial=0.0) < 0:
            return f"negative depths (min {float(array.min()):.4g} m)"
        return None


TASKS: dict[str, Task] = {}  # name -> entry, in the column order of the papers' tables


def register_task(task: Task, *, replace: bool = False) -> Task:
    """Add an entry to :data:`TASKS` (``replace=True`` to redefine one); returns it."""
    if not isinstance(task, Task) or type(task) is Task:
        raise TypeError(f"a task entry is an instance of a kind of Task (e.g. Depth), got {task!r}")
    if task.name in TASKS and not replace:
        raise ValueError(f"task {task.name!r} is registered already (pass replace=True to redefine it)")
    TASKS[task.name] = dataclasses.replace(task, title=task.title or f"{task.name} {task.main_metric}")
    return TASKS[task.name]


for _entry in (
    Classification(
        "semseg", 0, "Assign a semantic category label to every pixel of the image.", title="Semseg mIoU"
    ),
    Classification(
        "human_parts",
        NUM_HUMAN_PARTS,
        "Segment the human body parts such as head, torso, arms and legs at every pixel.",
        title="Parsing mIoU",
        ignore_without_foreground=True,
    ),
    Saliency(
        "sal",
        2,
        "Highlight the most visually salient object that attracts human attention.",
        title="Saliency maxF",
    ),
    Normals("normals", 3, "Estimate the 3D surface normal orientation at every pixel.", title="Normal mErr"),
    Boundary("edge", 1, "Detect the object boundaries and contours in the image.", title="Boundary ODS-F"),
    Depth(
        "depth",
        1,
        "Estimate the metric distance from the camera to the scene at every pixel.",
        title="Depth RMSE",
    ),
):
    register_task(_entry)

#: the built-in tasks (the ones the data sets provide), in their historic order
TASK_NAMES = ("semseg", "human_parts", "sal", "edge", "normals", "depth")
DEFAULT_INSTRUCTIONS: dict[str, str] = {name: TASKS[name].instruction for name in TASK_NAMES}


def get_task(name: str) -> Task:
    """The registered entry of ``name``; an unknown name raises a ``ValueError`` listing the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None


def make_task(
    name: str,
    *,
    num_classes: int | None = None,
    instruction: str | None = None,
    weight: float = 1.0,
    **options: Any,
) -> Task:
    """The task ``name`` as configured.

    Args:
        name: a registered task (:data:`TASKS`); an unknown name raises a ``ValueError`` listing them.
        num_classes: the number of classes of an entry whose channels come from the data set (``semseg``:
            NYUD 40, PASCAL 21).
        instruction: overrides the entry's instruction.
        weight: the loss weight lambda_j (eq. 14).
        options: fields of the entry's kind, e.g. ``make_task("sal", double_sigmoid=True)``,
            ``make_task("edge", workers=4)``; a field the kind does not have is a ``TypeError`` naming it.
    """
    entry = get_task(name)
    channels = entry.channels
    if channels == 0:
        if not num_classes or num_classes < 2:
            raise ValueError(f"task {name!r} needs num_classes >= 2, got {num_classes!r}")
        channels = int(num_classes)
    own = {field.name for field in dataclasses.fields(entry)} - {
        field.name for field in dataclasses.fields(Task)
    }
    unknown = sorted(set(options) - own)
    if unknown:
        raise TypeError(
            f"task {name!r} ({type(entry).__name__}) has no option {unknown[0]!r}; "
            f"its options: {sorted(own) or 'none'}"
        )
    return dataclasses.replace(
        entry,
        channels=channels,
        instruction=instruction or entry.instruction,
        weight=float(weight),
        **options,
    )
