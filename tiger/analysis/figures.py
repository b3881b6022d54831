"""Visualisation: prediction colour maps, routing-weight maps (the paper's Fig. 5), expert usage,
routing vs counterfactual-importance agreement, and task-embedding similarities (Fig. 6).

Every function is pure: figures are built as :class:`matplotlib.figure.Figure` objects without pyplot
(so no windows, no global figure registry and no backend switch), and rendered with the Agg canvas by
:func:`save_figure`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from tiger.tasks import Task, get_task

ArrayLike = np.ndarray | Tensor

ROUTING_CMAP = "viridis"
MAX_SIDE = 512  # figures draw images and maps at most this many pixels on their longer side
DPI = 120  # dots per inch of a saved or rendered figure


def _numpy(value: ArrayLike) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


# ----------------------------------------------------------------------------------------------------------
# Prediction colour maps


def colorize(
    task_name: str,
    prediction: ArrayLike,
    num_classes: int | None = None,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str | None = None,
) -> np.ndarray:
    """A prediction (or target) of one image -> an RGB picture (H, W, 3) uint8: the task entry's
    :meth:`tiger.tasks.Task.colorize`.

    Args:
        task_name: a registered task (:data:`tiger.tasks.TASKS`).
        prediction: numpy array or torch tensor, in the user layout of :meth:`tiger.tasks.Task.to_numpy`
            for one image:

            * semseg / human_parts: class map (H, W), integer; VOC palette, ``255`` (ignore) white.
            * depth: metres (H, W) or (1, H, W); ``0`` / non-finite (invalid) black. Near is bright: the
              colour is ``cmap((vmax - d) / (vmax - vmin))``, with vmin / vmax the 2nd / 98th percentiles of
              the valid depths unless given.
            * normals: unit vectors (H, W, 3) or (3, H, W) -> ``round((n + 1) / 2 * 255)``; all-zero
              (invalid) pixels black.
            * sal / edge: probabilities (H, W) in [0, 1] (or the saved uint8 format, divided by 255) -> grey.
        num_classes: classification tasks only: labels must be below it (or 255); default: the task's
            classes (any label < 256 for semseg, 7 for human_parts).
        vmin, vmax, cmap: depth only: the colour range in metres and a matplotlib colormap name (magma).
    """
    task = get_task(task_name)
    if num_classes and task.is_classification:
        task = replace(task, channels=num_classes)
    style = {key: value for key, value in dict(vmin=vmin, vmax=vmax, cmap=cmap).items() if value is not None}
    return task.colorize(_numpy(prediction), **style)


# ----------------------------------------------------------------------------------------------------------
# Routing maps (Fig. 5)


def routing_maps(alpha: ArrayLike, grid: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """Routing weights of one image on the token grid -> maps at the image size.

    Args:
        alpha: (T, M, N) routing weights, N = H * W.
        grid: the token grid (H, W).
        size: the image size (H0, W0).

    Returns:
        (T, M, H0, W0) float32, bilinearly upsampled (``align_corners=False``); still in [0, 1] and, when
        ``alpha`` sums to one over the experts, still summing to one.
    """
    weights = torch.as_tensor(_numpy(alpha), dtype=torch.float32)
    height, width = int(grid[0]), int(grid[1])
    if weights.ndim != 3 or weights.shape[-1] != height * width:
        raise ValueError(
            f"alpha must be (T, M, N) with N = {height}*{width} = {height * width} for grid {tuple(grid)}, "
            f"got {tuple(weights.shape)}"
        )
    maps = weights.reshape(-1, 1, height, width)
    upsampled = F.interpolate(maps, size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=False)
    return upsampled.reshape(*weights.shape[:2], int(size[0]), int(size[1])).clamp(0.0, 1.0).numpy()


def _image_hwc(image: ArrayLike, max_side: int | None = None) -> np.ndarray:
    """(H0, W0, 3) uint8 or (3, H0, W0) / (H0, W0, 3) float in [0, 1] -> (H, W, 3) float in [0, 1], shrunk
    to :func:`bounded_size` when ``max_side`` is given."""
    array = _numpy(image)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3) or (3, H, W), got shape {array.shape}")
    if max_side is not None:
        array = _shrink(
            array if array.dtype == np.uint8 else array.astype(np.float32),
            bounded_size(array.shape[:2], max_side),
        )
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.float64) / 255.0
    return np.clip(array.astype(np.float64), 0.0, 1.0)


def bounded_size(size: Sequence[int], max_side: int = MAX_SIDE) -> tuple[int, int]:
    """(H, W) scaled down (aspect kept) so that the longer side is at most ``max_side``; never up."""
    height, width = int(size[0]), int(size[1])
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _shrink(picture: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """(H, W, C) picture -> ``size`` (anti-aliased, or nearest for colour-coded labels)."""
    if picture.shape[:2] == size:
        return picture
    tensor = torch.from_numpy(np.require(picture, requirements=("C", "W"))).permute(2, 0, 1)
    if nearest:
        resized = TF.resize(tensor, list(size), interpolation=TF.InterpolationMode.NEAREST_EXACT)
    else:
        resized = TF.resize(tensor.float(), list(size), antialias=True)
    return resized.permute(1, 2, 0).numpy().astype(picture.dtype)


def _expert_colours(num_experts: int) -> ListedColormap:
    base = matplotlib.colormaps["tab10" if num_experts <= 10 else "tab20"]
    return ListedColormap([base(index % base.N) for index in range(num_experts)])


def plot_routing(
    image: ArrayLike,
    alpha: ArrayLike,
    grid: Sequence[int],
    task_names: Sequence[str],
    expert_names: Sequence[str],
    overlay: bool = True,
    max_side: int = MAX_SIDE,
) -> Figure:
    """Per-task, per-expert routing-weight maps over one image (the paper's Fig. 5).

    Rows are tasks; columns are the image, one routing map per expert (colour range fixed to [0, 1], one
    shared colorbar) and the argmax expert with a categorical legend.

    Args:
        image: (H0, W0, 3) uint8 or (3, H0, W0) float in [0, 1].
        alpha: (T, M, N) routing weights of this image.
        grid: the token grid (H, W).
        task_names: T names; expert_names: M names.
        overlay: draw the maps semi-transparently over a grey copy of the image.
        max_side: the image and the maps are drawn at most this many pixels on their longer side (a
            12-megapixel photo costs what a 512-pixel one does).
    """
    picture = _image_hwc(image, max_side)
    weights = _numpy(alpha)
    if weights.ndim != 3 or weights.shape[:2] != (len(task_names), len(expert_names)):
        raise ValueError(
            f"alpha must be (T, M, N) = ({len(task_names)}, {len(expert_names)}, N) for the given task and "
            f"expert names, got {weights.shape}"
        )
    maps = routing_maps(weights, grid, picture.shape[:2])
    num_tasks, num_experts = maps.shape[:2]
    grey = np.repeat(picture.mean(-1, keepdims=True), 3, axis=-1)
    map_alpha = 0.65 if overlay else 1.0
    expert_cmap = _expert_colours(num_experts)

    fig = Figure(figsize=(2.2 * (num_experts + 2) + 0.8, 2.0 * num_tasks + 0.9), layout="constrained")
    axes = np.asarray(fig.subplots(num_tasks, num_experts + 2, squeeze=False))
    for row, task in enumerate(task_names):
        axes[row, 0].imshow(picture)
        axes[row, 0].set_ylabel(task, fontsize=10)
        for column in range(num_experts):
            ax = axes[row, column + 1]
            if overlay:
                ax.imshow(grey)
            ax.imshow(maps[row, column], cmap=ROUTING_CMAP, vmin=0.0, vmax=1.0, alpha=map_alpha)
            ax.set_title(f"{task}: {expert_names[column]}", fontsize=8)
        ax = axes[row, -1]
        if overlay:
            ax.imshow(grey)
        ax.imshow(
            maps[row].argmax(0),
            cmap=expert_cmap,
            vmin=-0.5,
            vmax=num_experts - 0.5,
            alpha=map_alpha,
            interpolation="nearest",
        )
        ax.set_title(f"{task}: argmax expert", fontsize=8)
    axes[0, 0].set_title("image", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    colorbar_axes = axes[:, 1 : num_experts + 1].ravel().tolist()
    fig.colorbar(
        ScalarMappable(Normalize(0.0, 1.0), ROUTING_CMAP),
        ax=colorbar_axes,
        shrink=0.8,
        label="routing weight",
    )
    handles = [Patch(color=expert_cmap(index), label=name) for index, name in enumerate(expert_names)]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(num_experts, 6), title="argmax expert")
    return fig


# ----------------------------------------------------------------------------------------------------------
# Expert usage


def plot_prediction(
    image: ArrayLike, prediction: Mapping[str, np.ndarray], tasks: Sequence[Task], max_side: int = MAX_SIDE
) -> Figure:
    """The image and the colour picture (:meth:`tiger.tasks.Task.colorize`) of each of ``tasks`` in
    ``prediction`` ({task: array of one image}, e.g. a :class:`tiger.inference.Prediction`), drawn at
    most ``max_side`` pixels on the longer side."""
    picture = _image_hwc(image, max_side)
    size = picture.shape[:2]
    height, width = next(iter(prediction.values())).shape[:2] if prediction else size
    shown = [task for task in tasks if task.name in prediction]
    columns = min(4, len(shown) + 1)
    rows = math.ceil((len(shown) + 1) / columns)
    scale = 2.6 / max(size)
    figure = Figure(
        figsize=(columns * size[1] * scale + 0.4, rows * (size[0] * scale + 0.4)), layout="constrained"
    )
    axes = np.asarray(figure.subplots(rows, columns, squeeze=False)).ravel()
    axes[0].imshow(picture)
    axes[0].set_title(f"image {height}x{width}", fontsize=9)
    for ax, task in zip(axes[1:], shown, strict=False):
        ax.imshow(_shrink(task.colorize(prediction[task.name]), size, nearest=True), interpolation="nearest")
        ax.set_title(task.name, fontsize=9)
    for ax in axes:
        ax.axis("off")
    return figure


def _usage_matrix(usage: dict[str, dict[str, float]]) -> tuple[list[str], list[str], np.ndarray]:
    tasks = list(usage)
    if not tasks:
        raise ValueError("usage is empty")
    experts = list(usage[tasks[0]])
    for task in tasks:
        if list(usage[task]) != experts:
            raise ValueError(f"usage row {task!r} has experts {list(usage[task])}, expected {experts}")
    return tasks, experts, np.array([[usage[task][expert] for expert in experts] for task in tasks])


def plot_usage(usage: dict[str, dict[str, float]]) -> Figure:
    """Heat map of the mean routing weight (in %) per task (rows) and expert (columns), with numbers."""
    tasks, experts, matrix = _usage_matrix(usage)
    fig = Figure(figsize=(1.3 * len(experts) + 2.5, 0.55 * len(tasks) + 1.5), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(
        100 * matrix, cmap="Blues", vmin=0.0, vmax=100.0 * max(matrix.max(), 1e-12), aspect="auto"
    )
    _annotate(ax, 100 * matrix, "{:.1f}", image)
    ax.set_xticks(range(len(experts)), experts, rotation=30, ha="right")
    ax.set_yticks(range(len(tasks)), tasks)
    ax.set_title("mean routing weight (%)")
    fig.colorbar(image, ax=ax)
    return fig


def _annotate(ax, values: np.ndarray, fmt: str, image) -> None:
    """Write each value in its cell, black on light and white on dark colours."""
    for (row, column), value in np.ndenumerate(values):
        red, green, blue, _ = image.cmap(image.norm(value))
        light = 0.299 * red + 0.587 * green + 0.114 * blue > 0.5
        ax.text(
            column, row, fmt.format(value), ha="center", va="center", fontsize=8, color="k" if light else "w"
        )


# ----------------------------------------------------------------------------------------------------------
# Routing vs counterfactual importance


def plot_agreement(agreement: dict[str, dict[str, float]]) -> Figure:
    """Bar charts of :func:`routing_agreement` per task: JSD (lower is better), top-1 rate and Spearman."""
    tasks = list(agreement)
    if not tasks:
        raise ValueError("agreement is empty")
    metrics = [
        ("jsd", "mean JSD(p || alpha)", (0.0, float(np.log(2)))),
        ("top1", "top-1 agreement", (0.0, 1.0)),
    ]
    metrics.append(("spearman", "mean Spearman rho", (-1.0, 1.0)))
    fig = Figure(figsize=(4.0 * len(metrics), 0.5 * len(tasks) + 2.0), layout="constrained")
    axes = fig.subplots(1, len(metrics), sharey=True)
    colours = [matplotlib.colormaps["tab10"](index % 10) for index in range(len(tasks))]
    for ax, (key, title, limits) in zip(axes, metrics, strict=True):
        values = [agreement[task][key] for task in tasks]
        ax.barh(range(len(tasks)), values, color=colours)
        for row, value in enumerate(values):
            at = value if np.isfinite(value) else 0.0
            label = f" {value:.3f} " if np.isfinite(value) else " n/a "
            ax.text(at, row, label, va="center", ha="right" if at < 0 else "left", fontsize=8)
        ax.set_xlim(*limits)
        ax.set_xticks(np.linspace(*limits, 5))
        ax.axvline(0.0, color="k", linewidth=0.8)
        ax.set_title(title, fontsize=10)
    axes[0].set_yticks(range(len(tasks)), tasks)
    axes[0].invert_yaxis()
    return fig


# ----------------------------------------------------------------------------------------------------------
# Task-embedding similarities (Fig. 6)


SIMILARITY_TITLES = {
    "instruction": "instruction embeddings t0",
    "task": "task representation t (eq. 3)",
    "hyper": "after the hyper-network",
}


def plot_task_similarity(sims: dict[str, ArrayLike], task_names: Sequence[str]) -> Figure:
    """Side-by-side cosine-similarity heat maps with values (the paper's Fig. 6); range fixed to [-1, 1]."""
    if not sims:
        raise ValueError("sims is empty")
    size = len(task_names)
    matrices = {name: _numpy(matrix) for name, matrix in sims.items()}
    for name, matrix in matrices.items():
        if matrix.shape != (size, size):
            raise ValueError(
                f"similarity {name!r} must be ({size}, {size}) for the task names, got {matrix.shape}"
            )
    fig = Figure(
        figsize=(0.6 * size * len(matrices) + 2.5 * len(matrices), 0.6 * size + 2.0), layout="constrained"
    )
    axes = np.atleast_1d(fig.subplots(1, len(matrices)))
    image = None
    for ax, (name, matrix) in zip(axes, matrices.items(), strict=True):
        image = ax.imshow(matrix, cmap="RdBu_r", vmin=-1.0, vmax=1.0)
        _annotate(ax, matrix, "{:.2f}", image)
        ax.set_xticks(range(size), task_names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(size), task_names, fontsize=8)
        ax.set_title(SIMILARITY_TITLES.get(name, name), fontsize=10)
    fig.colorbar(image, ax=axes.tolist(), shrink=0.8, label="cosine similarity")
    return fig


# ----------------------------------------------------------------------------------------------------------


def render_figure(fig: Figure, max_side: int = MAX_SIDE) -> np.ndarray:
    """``fig`` as an RGB picture (H, W, 3) uint8, drawn at :data:`DPI` or at the lower resolution that
    keeps its longer side at most ``max_side`` pixels (what a logger receives); sets the figure's dpi."""
    width, height = fig.get_size_inches()
    fig.set_dpi(min(DPI, max_side / max(width, height)))
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    picture = np.asarray(canvas.buffer_rgba())[..., :3]
    return np.ascontiguousarray(_shrink(picture, bounded_size(picture.shape[:2], max_side)))


def save_figure(fig: Figure, path: str | Path, dpi: int = DPI) -> Path:
    """Write ``fig`` as a PNG (creating parent folders) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png", facecolor="white", bbox_inches="tight", pad_inches=0.1)
    return path
