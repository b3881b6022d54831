"""Image operations of the SEISM protocol: quantisation, NMS, boundaries of label maps, thinning."""

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.morphology import thin as skimage_thin

from tiger.metrics.boundary_ops import (
    ThinningSweep,
    conv_tri,
    edge_nms,
    edge_orientation,
    quantize_probability,
    seg2bmap,
    thin,
)


def test_quantisation_truncates_like_uint8_and_round_trips_saved_pngs():
    prob = np.array([[0.0, 0.999, 1.0, 0.5, 1 / 255 - 1e-3]], dtype=np.float32)
    assert (quantize_probability(prob) * 255).round().tolist() == [[0, 254, 255, 127, 0]]
    levels = np.arange(256, dtype=np.uint8)[None]
    assert np.array_equal(quantize_probability(levels), levels / 255.0)
    as_float = (levels / np.float32(255)).astype(np.float32)  # what a reader of the PNG hands over
    assert np.array_equal(quantize_probability(as_float), levels / 255.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        quantize_probability(np.array([[1.5]], dtype=np.float32))


def test_conv_tri_is_the_triangle_filter_with_symmetric_padding():
    image = np.random.default_rng(0).random((9, 11))
    kernel = np.array([1, 2, 3, 2, 1]) / 9.0  # radius 2
    padded = np.pad(image, 2, mode="symmetric")
    rows = np.stack([np.convolve(row, kernel, mode="valid") for row in padded])
    expected = np.stack([np.convolve(col, kernel, mode="valid") for col in rows.T]).T
    np.testing.assert_allclose(conv_tri(image, 2), expected)


def test_orientation_points_across_the_edge():
    vertical = np.zeros((21, 21))
    vertical[:, 10] = 1.0
    diagonal = np.eye(21)  # along (1, 1): across is (1, -1), i.e. 3 pi / 4 modulo pi
    anti_diagonal = np.fliplr(diagonal)
    # O is the direction NMS compares along (x + cos O, y + sin O)
    assert edge_orientation(vertical)[10, 10] == pytest.approx(0.0, abs=1e-6)
    assert edge_orientation(diagonal)[10, 10] == pytest.approx(3 * np.pi / 4, abs=1e-3)
    assert edge_orientation(anti_diagonal)[10, 10] == pytest.approx(np.pi / 4, abs=1e-3)
    # the reference formula's quirk: an exactly horizontal ridge has Oxy = 0, so sign(-Oxy) = 0 and O = 0
    assert edge_orientation(vertical.T.copy())[10, 10] == 0.0


def test_nms_keeps_a_one_pixel_ridge_of_a_blurred_line():
    line = np.zeros((30, 30))
    line[:, 14] = 1.0
    blurred = ndi.gaussian_filter(line, 1.5)
    blurred /= blurred.max()
    kept = edge_nms(blurred)
    inner = kept[6:-6, 6:-6]  # away from the border fade
    assert np.all(inner[:, 14 - 6] == blurred[6:-6, 14])  # the ridge survives unchanged
    assert np.count_nonzero(inner) == inner.shape[0]  # and nothing else: one pixel per row


def test_nms_border_fade_scales_the_outer_five_pixels():
    flat = np.full((20, 20), 0.5)
    flat[10, :] = 1.0  # a horizontal ridge reaching the left and right borders
    kept = edge_nms(flat)
    assert kept[10, 0] == 0.0  # outermost column: x 0/5
    np.testing.assert_allclose(kept[10, :6], [0, 0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(kept[10, -6:], [1.0, 0.8, 0.6, 0.4, 0.2, 0])


def seg2bmap_matlab(seg: np.ndarray) -> np.ndarray:
    """A line-by-line transcription of jponttuset/seism src/misc/seg2bmap.m (zero-filled shifted copies,
    then the last row, last column and corner overwritten), to check ours against."""
    e, s, se = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]  # e(:,1:end-1) = seg(:,2:end)
    s[:-1, :] = seg[1:, :]  # s(1:end-1,:) = seg(2:end,:)
    se[:-1, :-1] = seg[1:, 1:]  # se(1:end-1,1:end-1) = seg(2:end,2:end)
    b = (seg != e) | (seg != s) | (seg != se)
    b[-1, :] = seg[-1, :] != e[-1, :]
    b[:, -1] = seg[:, -1] != s[:, -1]
    b[-1, -1] = False
    return b


def test_seg2bmap_on_hand_made_label_maps():
    # east and south changes
    labels = np.array([[1, 1, 2], [1, 1, 2], [3, 3, 3]])
    expected = np.array([[0, 1, 0], [1, 1, 1], [0, 0, 0]], dtype=bool)
    np.testing.assert_array_equal(seg2bmap(labels), expected)
    # a change seen only by the south-east neighbour at (1, 1); last row east only, last column south
    # only, the corner never
    labels = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 2]])
    expected = np.array([[0, 0, 0], [0, 1, 1], [0, 1, 0]], dtype=bool)
    np.testing.assert_array_equal(seg2bmap(labels), expected)
    # a constant map has no boundary, whatever its value (the zero fill of seg2bmap.m never shows)
    assert not seg2bmap(np.full((4, 5), 7)).any()
    # the NYUD ground truth: a 1-pixel edge line read as labels gives the pixels on both sides of it
    edge = np.zeros((5, 5), np.uint8)
    edge[2, :] = 255
    expected = np.zeros((5, 5), bool)
    expected[1:3] = True
    np.testing.assert_array_equal(seg2bmap(edge), expected)
    with pytest.raises(ValueError, match="2-D"):
        seg2bmap(np.zeros((2, 3, 3)))


def test_seg2bmap_equals_the_matlab_transcription():
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (1, 6), (6, 1), (2, 2), (13, 17), (40, 31)]:
        for classes in (2, 5, 460):
            labels = rng.integers(0, classes, shape).astype(np.uint16)
            np.testing.assert_array_equal(seg2bmap(labels), seg2bmap_matlab(labels), err_msg=str(shape))
    blocks = np.kron(rng.integers(0, 4, (6, 8)), np.ones((5, 5), int))  # piecewise constant regions
    np.testing.assert_array_equal(seg2bmap(blocks), seg2bmap_matlab(blocks))
    assert seg2bmap(blocks).any()


def test_thin_equals_skimage_on_random_maps():
    rng = np.random.default_rng(0)
    for _ in range(20):
        shape = tuple(rng.integers(5, 50, 2))
        image = ndi.gaussian_filter(rng.random(shape), rng.uniform(0.5, 3)) > rng.uniform(0.45, 0.55)
        assert np.array_equal(thin(image), skimage_thin(image))


def test_thinning_sweep_follows_nested_thresholds_exactly():
    rng = np.random.default_rng(1)
    edges = np.round(ndi.gaussian_filter(rng.random((40, 45)), 1.5) * 30) / 30  # plateaus
    sweep = ThinningSweep(edges.shape)
    previous = np.zeros(edges.shape, dtype=bool)
    for t in np.unique(edges)[::-1][1:]:
        new = (edges > t) & ~sweep.on.reshape(42, 47)[1:-1, 1:-1].astype(bool)
        entered, left = sweep.add(sweep.flat_index(*np.nonzero(new)))
        current = sweep.thinned()
        assert np.array_equal(current, skimage_thin(edges > t))
        flags = np.zeros(sweep.on.size, dtype=bool)
        flags[entered] = True
        assert np.array_equal(flags.reshape(42, 47)[1:-1, 1:-1], current & ~previous)
        flags[:] = False
        flags[left] = True
        assert np.array_equal(flags.reshape(42, 47)[1:-1, 1:-1], previous & ~current)
        previous = current
