"""Image operations of the SEISM boundary protocol (PROTOCOL.md section 4, items 1, 2 and 4).

* :func:`quantize_probability`: ``uint8(prob * 255)`` truncation, back to [0, 1] (item 1).
* :func:`edge_nms`: the edge non-maximum suppression of Dollar's structured-edge toolbox
  (``edgesNmsMex`` with the orientation of ``convTri`` + ``gradient2``), item 2. Computed in float64
  where the MATLAB code uses single precision; its output is kept as floats (not re-saved as uint8).
* :func:`seg2bmap`: SEISM's boundary map of a label image, the ground truth before thinning (item 4).
* :func:`thin` and :class:`ThinningSweep`: morphological thinning, bit-identical to
  :func:`skimage.morphology.thin` (the Guo-Hall algorithm of MATLAB's ``bwmorph(..., 'thin', inf)``), fast
  when the same image is thinned at many nested thresholds.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

# The lookup tables of skimage.morphology.thin (the two Guo-Hall subiterations), indexed by the 8-neighbour
# code below. Imported rather than rebuilt so that our thinning equals skimage's by construction (tested).
from skimage.morphology._skeletonize import G123_LUT, G123P_LUT

# Neighbour (dy, dx) -> bit of the neighbourhood code, the weights skimage correlates with:
# [[8, 4, 2], [16, 0, 1], [32, 64, 128]].
_NEIGHBOUR_BITS = (
    ((-1, -1), 8),
    ((-1, 0), 4),
    ((-1, 1), 2),
    ((0, -1), 16),
    ((0, 1), 1),
    ((1, -1), 32),
    ((1, 0), 64),
    ((1, 1), 128),
)


def quantize_probability(prob: np.ndarray) -> np.ndarray:
    """The saved-PNG round trip ``uint8(prob * 255) / 255`` (truncation), as float64.

    Args:
        prob: (H, W) probabilities in [0, 1] (any float dtype), or a uint8 map already saved that way.

    Returns:
        (H, W) float64 in {0, 1/255, ..., 1}. A float input that is already ``k / 255`` (e.g. a saved PNG
        divided by 255 in float32) maps back to exactly ``k / 255``: a 1e-4 slack absorbs its rounding.
    """
    if prob.dtype == np.uint8:
        return prob.astype(np.float64) / 255.0
    if not np.issubdtype(prob.dtype, np.floating):
        raise ValueError(f"boundary probabilities must be float in [0, 1] or uint8, got dtype {prob.dtype}")
    prob = prob.astype(np.float64)
    if prob.size and (np.nanmin(prob) < 0.0 or np.nanmax(prob) > 1.0 or np.isnan(prob).any()):
        raise ValueError(
            f"boundary probabilities must lie in [0, 1], got range [{np.nanmin(prob)}, {np.nanmax(prob)}]"
            f"{' with NaN' if np.isnan(prob).any() else ''}"
        )
    return np.floor(prob * 255.0 + 1e-4) / 255.0


def conv_tri(image: np.ndarray, radius: int) -> np.ndarray:
    """Dollar's ``convTri``: separable triangle filter ``[1..r+1..1] / (r+1)^2``, symmetric padding.

    Args:
        image: (H, W) float array.
        radius: integer radius r >= 1.
    """
    kernel = np.concatenate([np.arange(1, radius + 2), np.arange(radius, 0, -1)]) / (radius + 1) ** 2
    smoothed = ndi.correlate1d(image, kernel, axis=0, mode="reflect")
    return ndi.correlate1d(smoothed, kernel, axis=1, mode="reflect")


def edge_orientation(edges: np.ndarray, radius: int = 4) -> np.ndarray:
    """Edge orientation in [0, pi) from second derivatives of a triangle-smoothed copy.

    ``O = mod(atan(Oyy * sign(-Oxy) / (Oxx + 1e-5)), pi)`` with ``[Ox, Oy] = gradient2(convTri(E, 4))``,
    ``Oxx = d/dx Ox``, ``Oxy = d/dx Oy``, ``Oyy = d/dy Oy`` (MATLAB ``gradient``: central differences,
    one-sided at the border, which is :func:`numpy.gradient`).

    Args:
        edges: (H, W) edge strength, H, W >= 2.
    """
    smooth = conv_tri(edges, radius)
    oy, ox = np.gradient(smooth)
    oxx = np.gradient(ox, axis=1)
    oyy, oxy = np.gradient(oy)
    return np.mod(np.arctan(oyy * np.sign(-oxy) / (oxx + 1e-5)), np.pi)


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``interp`` of edgesNmsMex: coordinates clamped to [0, size - 1.001], then bilinear."""
    h, w = image.shape
    x = np.clip(x, 0.0, w - 1.001)
    y = np.clip(y, 0.0, h - 1.001)
    x0, y0 = x.astype(np.intp), y.astype(np.intp)
    dx, dy = x - x0, y - y0
    return (
        image[y0, x0] * (1 - dx) * (1 - dy)
        + image[y0, x0 + 1] * dx * (1 - dy)
        + image[y0 + 1, x0] * (1 - dx) * dy
        + image[y0 + 1, x0 + 1] * dx * dy
    )


def edge_nms(
    edges: np.ndarray,
    orientation: np.ndarray | None = None,
    radius: int = 1,
    border: int = 5,
    multiplier: float = 1.01,
) -> np.ndarray:
    """Edge non-maximum suppression, ``edgesNmsMex(E, O, r=1, s=5, m=1.01)``.

    A non-zero pixel is zeroed when ``m * E`` is below the bilinearly interpolated edge strength at distance
    ``d = 1..r`` on either side along its orientation (``x + d cos O, y + d sin O``). Then pixels within
    ``s`` of the image border are multiplied by ``distance / s`` (the outermost row and column become 0).

    Args:
        edges: (H, W) edge strength in [0, 1], H, W >= 2.
        orientation: (H, W) orientation from :func:`edge_orientation`; computed when None.

    Returns:
        (H, W) float64 suppressed edge map.
    """
    if edges.ndim != 2 or min(edges.shape) < 2:
        raise ValueError(f"edge NMS needs a 2-D map of at least 2x2 pixels, got shape {edges.shape}")
    edges = edges.astype(np.float64)
    if orientation is None:
        orientation = edge_orientation(edges)
    out = edges.copy()
    ys, xs = np.nonzero(edges)
    strength = edges[ys, xs] * multiplier
    cos_o, sin_o = np.cos(orientation[ys, xs]), np.sin(orientation[ys, xs])
    suppressed = np.zeros(len(ys), dtype=bool)
    for d in range(-radius, radius + 1):
        if d:
            suppressed |= strength < _bilinear(edges, xs + d * cos_o, ys + d * sin_o)
    out[ys[suppressed], xs[suppressed]] = 0.0
    h, w = out.shape
    border = min(border, w // 2, h // 2)
    for i in range(border):
        fade = i / border
        out[:, i] *= fade
        out[:, w - 1 - i] *= fade
        out[i, :] *= fade
        out[h - 1 - i, :] *= fade
    return out


def seg2bmap(labels: np.ndarray) -> np.ndarray:
    """SEISM's ``seg2bmap``: the boundary map of a label image, as the ground truth of the boundary metric.

    A pixel is a boundary where its label differs from its east, south or south-east neighbour; in the
    last row only the east neighbour counts, in the last column only the south one, and the bottom-right
    pixel is never a boundary (jponttuset/seism ``src/misc/seg2bmap.m``, at the label image's own size).
    ``edgesEvalImg.m`` thins the result (``bwmorph(seg2bmap(G), 'thin', Inf)``); the metric does so itself.

    Args:
        labels: (H, W) label image (any dtype: the NYUD edge map read as labels, the PASCAL ``LabelMap``).

    Returns:
        (H, W) bool.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"seg2bmap needs a 2-D (H, W) label image, got shape {labels.shape}")
    east = labels[:, :-1] != labels[:, 1:]  # (H, W - 1)
    south = labels[:-1, :] != labels[1:, :]  # (H - 1, W)
    south_east = labels[:-1, :-1] != labels[1:, 1:]  # (H - 1, W - 1)
    boundary = np.zeros(labels.shape, dtype=bool)
    boundary[:-1, :-1] = east[:-1] | south[:, :-1] | south_east
    boundary[-1, :-1] = east[-1]
    boundary[:-1, -1] = south[:, -1]
    return boundary


class ThinningSweep:
    """Thinning of a binary image that grows, pixel set by pixel set, at a cost set by what changes.

    ``thin(B)`` is :func:`skimage.morphology.thin` (Guo-Hall parallel thinning, MATLAB's
    ``bwmorph(B, 'thin', inf)``): subiterations alternately delete, in parallel, every on pixel whose
    8-neighbour code passes that subiteration's lookup table, until a full iteration deletes nothing. When
    pixels ``C`` are added, the new run is replayed from the previous run's trajectory (the pixels deleted
    at each subiteration): a pixel whose own state and neighbourhood agree with the previous run at a
    subiteration makes the same decision, so only a "dirty" set, seeded with ``C`` and its neighbours and
    grown by the neighbours of every pixel whose decision differs, is re-evaluated. The result is exact.

    Pixels are flat indices of a 1-pixel zero-padded grid (:meth:`flat_index`).
    """

    def __init__(self, shape: tuple[int, int]) -> None:
        height, width = shape
        self.shape = (height, width)
        self.stride = width + 2
        size = (height + 2) * self.stride
        self.on = np.zeros(size, dtype=np.uint8)  # the unthinned image B
        self.code = np.zeros(size, dtype=np.uint8)  # 8-neighbour codes of B
        self.count = 0  # pixels in B
        self.trajectory: list[np.ndarray] = []  # pixels deleted at each subiteration of thin(B)
        self.deleted = np.empty(0, dtype=np.intp)  # B minus thin(B), sorted
        self._dirty = np.zeros(size, dtype=bool)
        self._slot = np.zeros(size, dtype=np.int32)
        self._offsets = np.array([dy * self.stride + dx for (dy, dx), _ in _NEIGHBOUR_BITS], dtype=np.intp)
        self._bits = [np.uint8(bit) for _, bit in _NEIGHBOUR_BITS]

    def flat_index(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Row/column indices of the (H, W) image -> flat indices of the padded grid."""
        return (np.asarray(ys, dtype=np.intp) + 1) * self.stride + np.asarray(xs, dtype=np.intp) + 1

    def _shift_codes(self, pixels: np.ndarray, sign: int) -> None:
        # Pixel q at offset o of pixel p sets bit(o) in code[p], i.e. code[q - o] changes with q.
        for offset, bit in zip(self._offsets.tolist(), self._bits, strict=True):
            if sign > 0:
                self.code[pixels - offset] += bit
            else:
                self.code[pixels - offset] -= bit

    def _mark_dirty(self, pixels: np.ndarray) -> np.ndarray:
        """Mark pixels and their neighbours dirty; return the newly marked ones."""
        around = np.concatenate([pixels, (pixels[:, None] + self._offsets[None, :]).ravel()])
        around = around[~self._dirty[around]]
        # de-duplicate without sorting: of repeated indices, the last assignment wins
        order = np.arange(len(around), dtype=np.int32)
        self._slot[around] = order
        fresh = around[self._slot[around] == order]
        self._dirty[fresh] = True
        return fresh

    def add(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Switch on distinct pixels that are off and re-thin.

        Returns:
            (entered, left): pixels of the new ``thin(B)`` that were not in the previous one, and pixels
            of the previous ``thin(B)`` that the new one no longer has.
        """
        pixels = np.asarray(pixels, dtype=np.intp)
        if pixels.size == 0:
            empty = np.empty(0, dtype=np.intp)
            return empty, empty
        self.on[pixels] = 1
        self._shift_codes(pixels, +1)
        self.count += int(pixels.size)

        dirty = self._mark_dirty(pixels)
        trajectory: list[np.ndarray] = []
        step = 0
        while True:
            iteration_deleted = 0
            for lut in (G123_LUT, G123P_LUT):
                previous = self.trajectory[step] if step < len(self.trajectory) else np.empty(0, np.intp)
                in_dirty = self._dirty[previous]
                candidates = dirty[self.on[dirty] == 1]
                decided = candidates[lut[self.code[candidates]]]
                doomed = np.concatenate([previous[~in_dirty], decided])
                changed = np.setxor1d(previous[in_dirty], decided, assume_unique=True)
                if doomed.size:
                    self.on[doomed] = 0
                    self._shift_codes(doomed, -1)
                if changed.size:
                    dirty = np.concatenate([dirty, self._mark_dirty(changed)])
                trajectory.append(doomed)
                iteration_deleted += doomed.size
                step += 1
            if iteration_deleted == 0:
                break
        self._dirty[dirty] = False
        deleted = np.sort(np.concatenate(trajectory))
        self.on[deleted] = 1
        self._shift_codes(deleted, +1)
        while trajectory and trajectory[-1].size == 0:
            trajectory.pop()

        entered = np.concatenate(
            [
                np.setdiff1d(pixels, deleted, assume_unique=True),
                np.setdiff1d(self.deleted, deleted, assume_unique=True),
            ]
        )
        left = np.setdiff1d(
            np.setdiff1d(deleted, self.deleted, assume_unique=True), pixels, assume_unique=True
        )
        self.trajectory, self.deleted = trajectory, deleted
        return entered, left

    def thinned(self) -> np.ndarray:
        """(H, W) bool, the current ``thin(B)``."""
        out = self.on.astype(bool)
        out[self.deleted] = False
        return out.reshape(self.shape[0] + 2, self.stride)[1:-1, 1:-1]


def thin(mask: np.ndarray) -> np.ndarray:
    """Morphological thinning to 1-pixel lines; same result as :func:`skimage.morphology.thin` (faster).

    Args:
        mask: (H, W) binary map.

    Returns:
        (H, W) bool.
    """
    if mask.ndim != 2:
        raise ValueError(f"thinning needs a 2-D map, got shape {mask.shape}")
    sweep = ThinningSweep(mask.shape)
    sweep.add(sweep.flat_index(*np.nonzero(mask)))
    return sweep.thinned()
