from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from tiger.analysis.figures import (
    bounded_size,
    colorize,
    plot_prediction,
    plot_routing,
    render_figure,
    routing_maps,
    save_figure,
)
from tiger.tasks import make_task


def assert_not_blank(path: Path) -> None:
    """The PNG exists, has contrast and more than two distinct colours."""
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert pixels.shape[0] > 50 and pixels.shape[1] > 50
    assert pixels.std() > 10.0
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 2


# ---------------------------------------------------------------------------------------------- colorize


def test_colorize_semseg_uses_the_voc_palette_and_marks_ignore() -> None:
    labels = np.array([[0, 1, 15], [255, 2, 20]], dtype=np.int64)
    rgb = colorize("semseg", torch.from_numpy(labels), num_classes=21)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    assert rgb[0, 0].tolist() == [0, 0, 0]
    assert rgb[0, 1].tolist() == [128, 0, 0]
    assert rgb[0, 2].tolist() == [192, 128, 128]  # VOC "person"
    assert rgb[1, 0].tolist() == [255, 255, 255]  # ignore
    assert rgb[1, 1].tolist() == [0, 128, 0]
    assert rgb[1, 2].tolist() == [0, 64, 128]  # VOC "tvmonitor"


def test_colorize_human_parts_rejects_labels_out_of_range() -> None:
    assert colorize("human_parts", np.array([[6, 3]]))[0, 1].tolist() == [128, 128, 0]
    with pytest.raises(ValueError, match=r"human_parts.*\[0, 7\).*\[9\]"):
        colorize("human_parts", np.array([[0, 9]]))
    with pytest.raises(ValueError, match="integer class map"):
        colorize("semseg", np.zeros((4, 4), dtype=np.float32))


def test_colorize_normals() -> None:
    normals = np.zeros((2, 2, 3), dtype=np.float32)
    normals[0, 0] = (0, 0, 1)
    normals[0, 1] = (1, 0, 0)
    normals[1, 0] = (0, -1, 0)
    rgb = colorize("normals", normals)
    assert rgb[0, 0, 0] in (127, 128) and rgb[0, 0, 1] in (127, 128) and rgb[0, 0, 2] == 255
    assert rgb[0, 1].tolist()[0] == 255 and rgb[0, 1, 2] in (127, 128)
    assert rgb[1, 0, 1] == 0
    assert rgb[1, 1].tolist() == [0, 0, 0]  # all-zero = invalid
    chw = colorize("normals", torch.from_numpy(normals).permute(2, 0, 1))
    np.testing.assert_array_equal(chw, rgb)


def test_colorize_depth_follows_the_colormap_near_bright() -> None:
    depth = np.linspace(1.0, 5.0, 9, dtype=np.float32)[None].repeat(2, 0)
    depth[1, 0] = 0.0  # invalid
    rgb = colorize("depth", depth, vmin=1.0, vmax=5.0, cmap="magma")
    position = (5.0 - depth[0]) / 4.0
    expected = (matplotlib.colormaps["magma"](position)[:, :3] * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(rgb[0], expected)
    brightness = rgb[0].astype(float).sum(-1)
    assert np.all(np.diff(brightness) < 0)  # farther = darker for magma
    assert rgb[1, 0].tolist() == [0, 0, 0]
    # Robust default range: one far outlier does not wash out the rest.
    ramp = np.concatenate([np.linspace(1.0, 2.0, 99), [100.0]])[None]
    robust = colorize("depth", ramp[None])
    assert robust[0, 0].astype(int).sum() > robust[0, 50].astype(int).sum() + 100


def test_colorize_probabilities_and_unknown_task() -> None:
    sal = colorize("sal", np.array([[0.0, 0.5, 1.0]]))
    assert sal[0, :, 0].tolist() == [0, 128, 255] and (sal[..., 0] == sal[..., 2]).all()
    assert colorize("edge", np.array([[0, 255]], dtype=np.uint8))[0, :, 1].tolist() == [0, 255]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        colorize("edge", np.array([[1.5]]))
    with pytest.raises(ValueError, match="known tasks: semseg"):
        colorize("optical_flow", np.zeros((2, 2)))


# ---------------------------------------------------------------------------------------------- routing


def one_hot_alpha(grid: tuple[int, int], special: int) -> torch.Tensor:
    """(T=2, M=3, N): expert 0 everywhere, but token ``special`` -> expert 2 (task 0) / 1 (task 1)."""
    tokens = grid[0] * grid[1]
    alpha = torch.zeros(2, 3, tokens)
    alpha[:, 0] = 1.0
    alpha[:, 0, special] = 0.0
    alpha[0, 2, special] = 1.0
    alpha[1, 1, special] = 1.0
    return alpha


def test_routing_maps_interpolate_and_keep_the_weights() -> None:
    grid = (3, 4)
    special = 1 * 4 + 2  # token at row 1, column 2
    maps = routing_maps(one_hot_alpha(grid, special), grid, (9, 12))  # 3x upsampling
    assert maps.shape == (2, 3, 9, 12) and maps.dtype == np.float32
    # The pixel at the centre of token (1, 2) is pixel (4, 7): exactly that token's weights.
    assert maps[0, 2, 4, 7] == pytest.approx(1.0, abs=1e-6)
    assert maps[1, 1, 4, 7] == pytest.approx(1.0, abs=1e-6)
    assert maps[0, 0, 4, 7] == pytest.approx(0.0, abs=1e-6)
    assert maps[0, 0, 0, 0] == pytest.approx(1.0, abs=1e-6)
    # Bilinear in between: half way to the neighbouring token's centre, and still summing to one.
    assert 0.0 < maps[0, 2, 4, 8] < 1.0
    np.testing.assert_allclose(maps.sum(1), 1.0, atol=1e-6)
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    with pytest.raises(ValueError, match="N = 3\\*5"):
        routing_maps(one_hot_alpha(grid, special), (3, 5), (9, 12))


def test_plot_routing_writes_a_figure(tmp_path: Path) -> None:
    grid = (3, 4)
    image = (np.random.default_rng(0).random((24, 32, 3)) * 255).astype(np.uint8)
    alpha = torch.rand(2, 3, 12).softmax(1)
    fig = plot_routing(image, alpha, grid, ["semseg", "depth"], ["clip", "dinov2", "sam"])
    assert len(fig.axes) == 2 * 5 + 1  # panels + shared colorbar
    titles = [ax.get_title() for ax in fig.axes]
    assert "semseg: dinov2" in titles and "depth: argmax expert" in titles
    path = save_figure(fig, tmp_path / "nested" / "routing.png")
    assert path.exists()
    assert_not_blank(path)
    float_chw = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    fig = plot_routing(float_chw, alpha, grid, ["semseg", "depth"], ["clip", "dinov2", "sam"], overlay=False)
    assert_not_blank(save_figure(fig, tmp_path / "routing_plain.png"))
    with pytest.raises(ValueError, match="alpha must be"):
        plot_routing(image, alpha, grid, ["semseg"], ["clip", "dinov2", "sam"])


def drawn_sizes(fig) -> list[tuple[int, ...]]:
    return [tuple(image.get_array().shape[:2]) for ax in fig.axes for image in ax.get_images()]


def test_figures_of_a_large_photo_are_drawn_at_a_bounded_resolution(tmp_path: Path) -> None:
    assert bounded_size((3000, 4000)) == (384, 512) and bounded_size((20, 30)) == (20, 30)
    image = np.zeros((1500, 2000, 3), np.uint8)
    image[:, 1000:] = 255
    alpha = torch.rand(1, 2, 12).softmax(1)
    fig = plot_routing(image, alpha, (3, 4), ["depth"], ["clip", "sam"], max_side=200)
    assert set(drawn_sizes(fig)) == {(150, 200)}
    picture = np.asarray(fig.axes[0].get_images()[0].get_array())
    assert picture[:, :90].max() == 0 and picture[:, 110:].min() == 1.0  # the photo, shrunk
    prediction = {"semseg": np.tile(np.arange(2000) // 1000, (1500, 1)), "depth": np.ones((1500, 2000))}
    tasks = [make_task("semseg", num_classes=3), make_task("depth")]
    fig = plot_prediction(image, prediction, tasks, max_side=200)
    assert set(drawn_sizes(fig)) == {(150, 200)} and fig.axes[0].get_title() == "image 1500x2000"
    labels = np.asarray(fig.axes[1].get_images()[0].get_array())
    assert {tuple(c) for c in labels.reshape(-1, 3)} == {
        (0, 0, 0),
        (128, 0, 0),
    }  # nearest: palette colours only
    assert_not_blank(save_figure(fig, tmp_path / "prediction.png"))


def test_a_rendered_figure_is_an_rgb_picture_of_bounded_size() -> None:
    alpha = torch.rand(3, 4, 12).softmax(1)
    image = np.zeros((24, 32, 3), np.uint8)
    fig = plot_routing(image, alpha, (3, 4), ["semseg", "depth", "edge"], ["a", "b", "c", "d"])
    picture = render_figure(fig, max_side=300)
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
    assert max(picture.shape[:2]) == 300  # the longer side, at the lower resolution that fits
    assert picture.std() > 10.0
    small = plot_routing(image, alpha[:1, :2], (3, 4), ["semseg"], ["a", "b"])
    unbounded = render_figure(small, max_side=10_000)  # never drawn above the saving resolution
    assert max(unbounded.shape[:2]) == round(120 * max(small.get_size_inches()))
