"""Inference on the user's own images from a training checkpoint.

``load_model(checkpoint)`` rebuilds TIGER from the checkpoint alone: the frozen experts from the identities
stored in it (with their own pretrained weights, or a local copy the user names per role), the task
instructions from the embeddings kept in its state dict (no text encoder needed), and the trained weights.
The :class:`Predictor` it returns maps images of any size to predictions in the user's units at each
image's own size::

    predictor = load_model("outputs/train/runs/<run>/checkpoints/last.ckpt")
    prediction = predictor.predict([Image.open("photo.jpg")], routing=True)[0]
    prediction["depth"]          # (H, W) float32 metres
    prediction.routing.alpha     # (T, M, N) routing weights on prediction.routing.grid

Image size: each image is resized (with anti-aliasing) to its token grid times the largest expert patch
size, and the heads upsample straight to the original size. An image whose aspect ratio is within
:data:`ASPECT_TOLERANCE` of the training grid's uses the training grid itself; any other image gets a grid
with about as many tokens as the training grid but its own aspect ratio (the experts interpolate their
position embeddings), so a portrait photo is not squashed into a landscape grid. ``keep_aspect=False``
always uses the training grid.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from tiger.analysis.routing import RoutingReport, RoutingStatistics, counterfactual_importance, shapley_credit
from tiger.data.common import image_to_rgb
from tiger.model import TIGER, TigerOutput
from tiger.model.build import tiger_from_checkpoint
from tiger.model.checkpoint import SECTION, CheckpointError, read_checkpoint
from tiger.model.nn import QueryEncoder
from tiger.tasks import Task
from tiger.training.losses import LossConfig

ASPECT_TOLERANCE = 1.25  # largest stretch (either way) of an image's aspect ratio onto the training grid
BATCH_PIXELS = 2**21  # pixels per forward pass (8 images of 512 x 512): the heads' logits are at full size

ImageLike = Image.Image | np.ndarray | Tensor


@dataclass(frozen=True)
class Routing:
    """The routing weights of one image.

    Attributes:
        alpha: (T, M, N) float32, alpha_{k,n}(t) (eq. 6), N = grid[0] * grid[1], summing to one over M.
        grid: the token grid (H, W) the image was routed on.
        task_names: the T task names; expert_names: the M expert names.
    """

    alpha: np.ndarray
    grid: tuple[int, int]
    task_names: list[str]
    expert_names: list[str]


class Prediction(Mapping[str, np.ndarray]):
    """The predictions for one image: a read-only mapping {task: array} at the image's own size (H, W).

    semseg / human_parts: class map (H, W) int64; depth: metres (H, W) float32, positive; normals: unit
    vectors (H, W, 3) float32; sal / edge: probabilities (H, W) float32 in [0, 1].

    Attributes:
        size: (H, W) of the image.
        routing: the routing weights, when asked for.
    """

    def __init__(
        self, outputs: dict[str, np.ndarray], size: tuple[int, int], routing: Routing | None = None
    ) -> None:
        self._outputs = outputs
        self.size = size
        self.routing = routing

    def __getitem__(self, task: str) -> np.ndarray:
        try:
            return self._outputs[task]
        except KeyError:
            raise KeyError(f"no prediction for task {task!r}; this one has {list(self._outputs)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._outputs)

    def __len__(self) -> int:
        return len(self._outputs)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{task}: {array.dtype}{list(array.shape)}" for task, array in self.items())
        routed = ", routing" if self.routing is not None else ""
        return f"Prediction(size={self.size}, {shapes}{routed})"


def latest_checkpoint(env: str = "TIGER_CHECKPOINT", start: str | Path | None = None) -> Path:
    """The checkpoint named by the environment variable ``env``, else the newest
    ``outputs/train/runs/*/checkpoints/last.ckpt`` in ``start`` (default: the working directory) or the
    nearest parent folder that has ``outputs/train/runs`` (so a notebook in ``notebooks/`` finds the runs
    of the project root).

    Raises:
        FileNotFoundError: the variable names a missing file, or no run has a ``last.ckpt``.
    """
    named = os.environ.get(env)
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"${env} names {path}, which does not exist")
        return path
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        runs = folder / "outputs" / "train" / "runs"
        found = sorted(runs.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if found:
            return found[-1]
    raise FileNotFoundError(
        f"no checkpoint: set ${env} or train one with `python -m tiger.train` (looked for "
        f"outputs/train/runs/*/checkpoints/last.ckpt in {here} and its parents)"
    )


def load_model(
    checkpoint: str | Path,
    *,
    expert_weights: Mapping[str, str | Path | None] | None = None,
    device: str | torch.device = "cpu",
    keep_aspect: bool = True,
    batch_size: int = 8,
) -> Predictor:
    """Rebuild a trained TIGER from a checkpoint of ``python -m tiger.train``.

    Args:
        checkpoint: a ``.ckpt`` file.
        expert_weights: per expert role (e.g. ``"sam"``, the keys of the ``experts`` config group), the
            weights to use instead of the stored ones: a local file or folder, a hub id, or None for a
            random init. E.g. ``{"sam": "/ckpt/sam_vit_b_01ec64.pth"}``.
        device: where to run, e.g. ``"cuda"``.
        keep_aspect: see the module docstring.
        batch_size: images per forward pass.

    Raises:
        FileNotFoundError: no such checkpoint file.
        ValueError: not a TIGER checkpoint; an unknown role in ``expert_weights``; trainable weights that do
            not fit the stored configuration (naming the keys / shapes).
        tiger.experts.ExpertWeightsError: an expert's weights cannot be found (offline, missing file).
    """
    path = Path(checkpoint)
    saved = read_checkpoint(path)
    return Predictor(
        tiger_from_checkpoint(saved, path, expert_weights),
        dataset=str(saved["tiger"].get("dataset", "")),
        loss_config=stored_loss_config(saved, path),
        device=device,
        keep_aspect=keep_aspect,
        batch_size=batch_size,
    )


def stored_loss_config(saved: Mapping[str, Any], source: str | Path) -> LossConfig:
    """The objective's options a checkpoint was trained with (defaults for the ones it predates)."""
    stored = dict(saved[SECTION].get("loss") or {})
    known = {field.name for field in dataclasses.fields(LossConfig)}
    try:
        return LossConfig(**{key: value for key, value in stored.items() if key in known})
    except ValueError as error:
        raise CheckpointError(f"{source}: its stored loss options are not valid: {error}") from error


class Predictor:
    """A trained TIGER ready for inference (eval mode, no autograd).

    Args:
        model: the TIGER model.
        dataset: the dataset it was trained on (informative).
        loss_config: the counterfactual objective the model was trained with (target, tau, removal) for
            :meth:`routing_report` (TigerLoss defaults where absent).
        device: where to run.
        keep_aspect: see the module docstring.
        batch_size: images per forward pass, at most.
        batch_pixels: pixels per forward pass, at most (large photos go one at a time).

    Attributes:
        tasks, task_names, expert_names, grid (the training token grid), patch (pixels per token side of the
        resized input: the largest expert patch size, at least the query encoder's stride).
    """

    def __init__(
        self,
        model: TIGER,
        *,
        dataset: str = "",
        loss_config: LossConfig | None = None,
        device: str | torch.device = "cpu",
        keep_aspect: bool = True,
        batch_size: int = 8,
        batch_pixels: int = BATCH_PIXELS,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if batch_pixels < 1:
            raise ValueError(f"batch_pixels must be >= 1, got {batch_pixels}")
        self.batch_pixels = batch_pixels
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.dataset = dataset
        self.loss_config = loss_config or LossConfig()
        self.keep_aspect = keep_aspect
        self.batch_size = batch_size
        self.patch = max([QueryEncoder.stride, *(expert.patch_size for expert in model.experts)])

    @property
    def tasks(self) -> list[Task]:
        return list(self.model.tasks)

    @property
    def task_names(self) -> list[str]:
        return self.model.task_names

    @property
    def expert_names(self) -> list[str]:
        return self.model.expert_names

    @property
    def grid(self) -> tuple[int, int]:
        return self.model.grid

    def __repr__(self) -> str:
        return (
            f"Predictor(dataset={self.dataset!r}, tasks={self.task_names}, experts={self.expert_names}, "
            f"grid={self.grid}, device={str(self.device)!r})"
        )

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """The token grid (H, W) for an image of ``height`` x ``width`` pixels (see the module docstring)."""
        rows, columns = self.grid
        stretch = (height / width) / (rows / columns)
        if not self.keep_aspect or 1 / ASPECT_TOLERANCE <= stretch <= ASPECT_TOLERANCE:
            return self.grid
        tokens = rows * columns
        return (
            max(1, round(math.sqrt(tokens * height / width))),
            max(1, round(math.sqrt(tokens * width / height))),
        )

    @torch.no_grad()
    def forward(self, images: Tensor, size: tuple[int, int] | None = None) -> TigerOutput:
        """One batch (B, 3, H0, W0) float in [0, 1] -> logits at ``size`` (default (H0, W0)) and routing.

        The images are resized with anti-aliasing to the token grid of :meth:`token_grid` times
        :attr:`patch` before the experts see them.
        """
        height, width = images.shape[-2:]
        grid = self.token_grid(height, width)
        work = (grid[0] * self.patch, grid[1] * self.patch)
        pixels = images.to(self.device, torch.float32)
        if (height, width) != work:
            pixels = TF.resize(pixels, list(work), antialias=True)  # bilinear
        return self.model(pixels, grid, size=size or (height, width))

    def predict(
        self, images: Tensor | Sequence[ImageLike], routing: bool = False, tasks: Sequence[str] | None = None
    ) -> list[Prediction]:
        """Predict every task for every image, at each image's own size.

        Args:
            images: a batch (B, 3, H, W) float in [0, 1], or a list of images of any sizes: PIL images
                (converted to RGB: greyscale, palette and RGBA images too, alpha dropped), (H, W, 3) or
                greyscale (H, W) uint8 arrays, (H, W, 3) float arrays in [0, 1], (3, H, W) float tensors.
            routing: also return the routing weights of every image.
            tasks: the tasks to return (default all).

        Returns:
            One :class:`Prediction` per image, in order.
        """
        wanted = self._check_tasks(tasks)
        tensors = as_image_tensors(images)
        results: list[Prediction | None] = [None] * len(tensors)
        for indices in self._batches(tensors):
            batch = torch.stack([tensors[i] for i in indices])
            output = self.forward(batch)
            outputs = {
                task.name: task.to_numpy(task.postprocess(output.predictions[task.name]))
                for task in self.model.tasks
                if task.name in wanted
            }
            alpha = output.alpha.float().cpu().numpy() if routing else None
            for row, index in enumerate(indices):
                routed = None
                if alpha is not None:
                    routed = Routing(alpha[row], output.grid, self.task_names, self.expert_names)
                size = (int(batch.shape[-2]), int(batch.shape[-1]))
                results[index] = Prediction({k: v[row] for k, v in outputs.items()}, size, routed)
        return [result for result in results if result is not None]

    def routing_report(
        self,
        images: Tensor | Sequence[ImageLike],
        targets: Mapping[str, Tensor] | None = None,
        *,
        shapley: bool = True,
    ) -> RoutingReport:
        """Expert usage over ``images`` and, given targets, how well routing follows each expert's effect.

        Args:
            images: as for :meth:`predict`; with ``targets`` a batch (B, 3, H, W) float in [0, 1].
            targets: {task: target batch} in the format of :mod:`tiger.tasks` at (H, W), for any of the
                model's tasks. Routing is compared with the model's counterfactual training target (eq. 8-10
                or the trained ``model.loss.target``, with the trained removal) and, with ``shapley``, with
                exact Shapley credit (:func:`tiger.analysis.routing.shapley_credit`: 2^M decoder passes a
                batch), over the tokens with valid target pixels.
            shapley: measure the Shapley credit too (only with targets and more than one expert).
        """
        if targets is None:
            statistics = RoutingStatistics(self.task_names, self.expert_names)
            for prediction in self.predict(images, routing=True, tasks=[]):
                statistics.update(torch.from_numpy(prediction.routing.alpha[None]))
            return RoutingReport(statistics.compute()["usage"])
        if not isinstance(images, Tensor) or images.ndim != 4:
            raise ValueError("routing_report with targets needs the images as one batch tensor (B, 3, H, W)")
        batch = as_image_tensors(images)
        config = self.loss_config
        routed = len(self.expert_names) > 1
        statistics = RoutingStatistics(
            self.task_names, self.expert_names, [config.removal], shapley=shapley and routed
        ).to(self.device)
        for indices in self._batches(batch):
            output = self.forward(torch.stack([batch[i] for i in indices]))
            chunk = {name: target[indices].to(self.device) for name, target in targets.items()}
            importance = {config.removal: counterfactual_importance(self.model, output, chunk, config)}
            credit = (
                shapley_credit(self.model, output, chunk, config.removal, eps=config.eps)
                if statistics.shapley
                else None
            )
            statistics.update(output.alpha, importance, credit)
        summary = statistics.compute()
        return RoutingReport(
            summary["usage"], summary["target_agreement"][config.removal], summary.get("shapley")
        )

    def _check_tasks(self, tasks: Sequence[str] | None) -> set[str]:
        if tasks is None:
            return set(self.task_names)
        unknown = sorted(set(tasks) - set(self.task_names))
        if unknown:
            raise ValueError(f"unknown tasks {unknown}; this model predicts {self.task_names}")
        return set(tasks)

    def _batches(self, tensors: Sequence[Tensor]) -> Iterator[list[int]]:
        """Indices of same-sized images, at most ``batch_size`` and ``batch_pixels`` pixels at a time (one
        image at least)."""
        by_size: dict[tuple[int, ...], list[int]] = {}
        for index, tensor in enumerate(tensors):
            by_size.setdefault(tuple(tensor.shape), []).append(index)
        for shape, indices in by_size.items():
            step = max(1, min(self.batch_size, self.batch_pixels // (shape[-2] * shape[-1])))
            for start in range(0, len(indices), step):
                yield indices[start : start + step]


def as_image_tensor(image: ImageLike, index: int = 0) -> Tensor:
    """One image -> (3, H, W) float32 in [0, 1] (torchvision's ``to_image`` / ``to_dtype`` /
    ``grayscale_to_rgb``); see :meth:`Predictor.predict` for what is accepted."""
    if isinstance(image, Image.Image):
        image = image_to_rgb(image, f"image {index}")  # 16-bit grey scaled, unknown modes refused
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] != 3):
            raise ValueError(
                f"image {index}: expected an (H, W, 3) RGB or (H, W) greyscale array, got shape {image.shape}"
            )
        if image.dtype != np.uint8 and not np.issubdtype(image.dtype, np.floating):
            raise ValueError(f"image {index}: expected uint8 or float in [0, 1], got dtype {image.dtype}")
        array = image if image.dtype == np.uint8 else image.astype(np.float32)
        image = TF.to_image(np.require(array, requirements="W"))  # torch wants a writable array
        if image.shape[0] == 1:
            image = TF.grayscale_to_rgb(image)
    elif isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3 or not image.is_floating_point():
            raise ValueError(
                f"image {index}: expected a float tensor (3, H, W) in [0, 1], got {image.dtype} "
                f"{tuple(image.shape)}"
            )
    else:
        raise TypeError(
            f"image {index}: expected a PIL image, numpy array or tensor, got {type(image).__name__}"
        )
    tensor = TF.to_dtype(image, torch.float32, scale=True).as_subclass(Tensor)
    if tensor.shape[-1] < 1 or tensor.shape[-2] < 1:
        raise ValueError(f"image {index}: empty image of size {tuple(tensor.shape[-2:])}")
    low, high = float(tensor.min()), float(tensor.max())
    if not (math.isfinite(low) and math.isfinite(high)) or low < 0.0 or high > 1.0:
        raise ValueError(f"image {index}: float values must lie in [0, 1], got range [{low:.4g}, {high:.4g}]")
    return tensor


def as_image_tensors(images: Tensor | Sequence[ImageLike]) -> list[Tensor]:
    """A batch (B, 3, H, W) or a list of images -> list of (3, H, W) float32 tensors in [0, 1]."""
    if isinstance(images, Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected a batch of RGB images (B, 3, H, W), got {tuple(images.shape)}")
        return [as_image_tensor(image, index) for index, image in enumerate(images)]
    if isinstance(images, Image.Image | np.ndarray):
        raise TypeError("pass a list of images (or a batch tensor), e.g. predict([image])")
    return [as_image_tensor(image, index) for index, image in enumerate(images)]
