"""Per-image boundary counts at every threshold of the SEISM protocol (PROTOCOL.md section 4, items 1-5).

For one image and each threshold t: the prediction ``E > t`` (E the uint8-quantised, NMS-ed map) is
thinned, and its pixels are matched one to one to the thinned ground-truth boundary pixels within
``max_dist * diagonal`` (Euclidean distance <= radius). The four counts are (matched prediction pixels,
prediction pixels, matched ground-truth pixels, ground-truth pixels).

Matching (option ``matching``). The reference ``correspondPixels`` (BSDS / SEISM) solves a min-cost perfect
assignment (CSA) in which the links to "unmatched" outlier nodes form a sparse random graph; that graph can
deny a maximum matching, so its counts are a few per 10,000 below a maximum matching's.

* ``"bsds"`` (default): that assignment, its graph built rule for rule with seeded random links
  (:mod:`~tiger.metrics.boundary_bsds`), solved at each threshold from the sweep's maximum matching below.
* ``"maximum"``: an exact *maximum-cardinality* matching within the radius, the sweep's own (counts >= the
  reference's; about 10x faster).

Speed of the maximum matching (all 101 thresholds of a 425x560 map in about 0.4 s of one core).

* Thresholded maps are nested: pass 1 grows the map from the highest threshold to the lowest and keeps
  its thinning up to date by replaying only what changes (:class:`~.boundary_ops.ThinningSweep`), which
  gives, per threshold, the pixels entering and leaving ``thin(E > t)``.
* Pass 2 keeps one maximum matching from the lowest threshold to the highest, updated by those few
  changes with augmenting-path searches pruned by "dead" marks (:class:`_IncrementalMatcher`).
* The sets of prediction pixels that can be matched together form a matroid: a maximum matching built
  from the highest threshold down (the greedy basis) stays maximum when the lowest pixels leave. The
  initial matching is built that way, so as the threshold rises few matched pixels leave.
* Searches that grow too long fall back to a max flow (scipy's Dinic, in C) on the residual network.

Every maximum-matching count equals a brute-force reference (skimage thinning and a max flow per threshold):
see ``tests/metrics/test_boundary_matching.py``; the ``"bsds"`` counts equal a transcription of ``match.cc``
solved from scratch: ``tests/metrics/test_boundary_bsds.py``.
"""

from __future__ import annotations

from array import array

import numpy as np
from scipy import ndimage as ndi
from scipy import sparse
from scipy.sparse import csgraph

from tiger.metrics.boundary_bsds import MULTIPLIER, check_matching, correspondence_count, outlier_weight
from tiger.metrics.boundary_ops import ThinningSweep, edge_nms, quantize_probability, thin

# 0.001, 0.01, 0.02, ..., 0.99, 0.999 (PROTOCOL.md section 4, item 3).
SEISM_THRESHOLDS = np.concatenate([[0.001], np.arange(1, 100) / 100.0, [0.999]])

# Rows of the (4, T) count arrays.
MATCHED_PRED, NUM_PRED, MATCHED_GT, NUM_GT = range(4)

_STENCIL_CHUNK = 4096


def seism_thresholds(num_thresholds: int = 101) -> np.ndarray:
    """The SEISM thresholds for 101 (the protocol); otherwise BSDS-style ``k / (n + 1)``, k = 1..n."""
    if num_thresholds == 101:
        return SEISM_THRESHOLDS.copy()
    if num_thresholds < 1:
        raise ValueError(f"num_thresholds must be >= 1, got {num_thresholds}")
    return np.arange(1, num_thresholds + 1) / (num_thresholds + 1.0)


def _ragged_positions(indptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For CSR rows: (position of each entry's row in ``rows``, index of the entry in the CSR arrays)."""
    starts = indptr[rows]
    lengths = indptr[rows + 1] - starts
    owner = np.repeat(np.arange(len(rows)), lengths)
    first = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return owner, np.arange(int(lengths.sum())) - first + np.repeat(starts, lengths)


def _shared_int64(size: int, fill: int) -> tuple[array, np.ndarray]:
    """An int64 buffer seen both as a Python ``array`` (fast scalar access) and as a numpy array."""
    buffer = array("q", [fill]) * size
    return buffer, np.frombuffer(buffer, dtype=np.int64) if size else np.empty(0, dtype=np.int64)


def _shared_flags(size: int) -> tuple[bytearray, np.ndarray]:
    """A zeroed flag buffer seen both as a ``bytearray`` and as a numpy uint8 array."""
    buffer = bytearray(size)
    return buffer, np.frombuffer(buffer, dtype=np.uint8) if size else np.empty(0, dtype=np.uint8)


class _IncrementalMatcher:
    """A maximum bipartite matching between prediction nodes, which come and go, and ground-truth nodes.

    ``indptr`` / ``indices``: CSR of the ground-truth neighbours of every prediction node, nearest first.
    After :meth:`initialise`, :meth:`add` and :meth:`remove` the matching is maximum on the active nodes.

    Updates search augmenting paths breadth-first in Python, pruned by *dead marks* on gts. Three
    invariants hold after every call: (1) a marked gt is dead: no alternating path from it (gt -> its
    mate -> a gt next to that mate -> ...) reaches a free gt; (2) every gt reachable from a marked one is
    marked; (3) every gt reachable from a free active pred (pred -> a gt next to it -> its mate -> ...) is
    marked. Forward searches from new preds skip marked gts and mark what they reached when they fail;
    an augmentation keeps the invariants (an alternating path through a re-routed pair would extend to an
    augmenting path of the previous maximum matching). When a search grows past ``work_budget`` gts
    (long paths: free vertices are scarce), the rest of the call is left to :meth:`_maximise_by_flow`, a
    max flow on the residual network in C, which also recomputes the marks exactly.

    Nodes must be numbered so that, at each step, the inactive ones include every node >= ``limit`` (the
    sweep numbers them by decreasing threshold level): backward searches stop scanning there.
    """

    def __init__(
        self, indptr: np.ndarray, indices: np.ndarray, num_gt: int, work_budget: int = 50_000
    ) -> None:
        self.indptr, self.indices = indptr, indices
        num_pred = len(indptr) - 1
        self.entry_owner = np.repeat(np.arange(num_pred), np.diff(indptr))
        self.work_budget = work_budget
        self._gt_mate, self.gt_mate = _shared_int64(num_gt, -1)
        self._pred_mate, self.pred_mate = _shared_int64(num_pred, -1)
        self._dead, self.dead = _shared_flags(num_gt)
        self._active, self.active = _shared_flags(num_pred)
        self.size = 0
        self.flow_solves = 0
        self.limit = num_pred  # nodes >= limit are inactive (the caller numbers nodes so)
        self._start = indptr[:-1].tolist()
        self._end = indptr[1:].tolist()
        self._neighbours = indices.tolist()
        reverse = sparse.csr_array(
            (np.ones(len(indices), dtype=np.int8), indices, indptr), shape=(num_pred, num_gt)
        ).tocsc()
        reverse.sort_indices()  # a gt's preds in node order, for the ``limit`` cut-off
        self._reverse_start = reverse.indptr.tolist()
        self._reverse_preds = reverse.indices.tolist()

    def initialise(self, stages: list[np.ndarray], search_budget: int = 2000, max_flows: int = 4) -> None:
        """Activate the nodes of ``stages`` (nothing active or matched yet) stage after stage, each added
        as by :meth:`add`, so that the matching prefers nodes of earlier stages (fewer matched nodes leave
        when the threshold rises). Searches past ``search_budget`` gts fall back to max flow; after
        ``max_flows`` of those, the remaining stages are added in ``max_flows`` groups."""
        budget, self.work_budget = self.work_budget, search_budget
        flows_before = self.flow_solves
        for number, preds in enumerate(stages):
            if self.flow_solves - flows_before >= max_flows:
                for group in np.array_split(np.concatenate(stages[number:]), max_flows):
                    self._greedy(group)
                    self._maximise_by_flow()
                break
            self.add(preds)
        self.work_budget = budget

    def _maximise_by_flow(self, update_marks: bool = True) -> None:
        """Complete the current matching to a maximum one with a max flow on its residual network (scipy's
        Dinic), then set the dead marks to exactly the gts reachable from free active preds (invariants
        1-3: such a gt reaching a free gt would close an augmenting path)."""
        self.flow_solves += 1
        num_pred, num_gt = len(self.pred_mate), len(self.gt_mate)
        source, sink = num_pred + num_gt, num_pred + num_gt + 1
        live = self.active[self.entry_owner] == 1
        owners, gts = self.entry_owner[live], self.indices[live]
        unmatched_edge = self.pred_mate[owners] != gts
        matched_gts = np.flatnonzero(self.gt_mate >= 0)
        free_preds = np.flatnonzero((self.active == 1) & (self.pred_mate < 0))
        free_gts = np.flatnonzero(self.gt_mate < 0)
        tails = np.concatenate(
            [
                owners[unmatched_edge],
                matched_gts + num_pred,
                np.full(len(free_preds), source),
                free_gts + num_pred,
            ]
        )
        heads = np.concatenate(
            [
                gts[unmatched_edge] + num_pred,
                self.gt_mate[matched_gts],
                free_preds,
                np.full(len(free_gts), sink),
            ]
        )
        network = sparse.csr_array(
            (np.ones(len(tails), dtype=np.int32), (tails, heads)), shape=(sink + 1, sink + 1)
        )
        flow = csgraph.maximum_flow(network, source, sink, method="dinic").flow.tocoo()
        moved = flow.data > 0
        tails, heads = flow.row[moved], flow.col[moved]
        released = (tails >= num_pred) & (tails < source) & (heads < num_pred)  # gt -> its old mate
        self.pred_mate[heads[released]] = -1
        self.gt_mate[tails[released] - num_pred] = -1
        taken = (tails < num_pred) & (heads >= num_pred) & (heads < source)  # pred -> its new gt
        self.pred_mate[tails[taken]] = heads[taken] - num_pred
        self.gt_mate[heads[taken] - num_pred] = tails[taken]
        self.size = int((self.gt_mate >= 0).sum())
        if not update_marks:
            return

        matched_gts = np.flatnonzero(self.gt_mate >= 0)
        free_preds = np.flatnonzero((self.active == 1) & (self.pred_mate < 0))
        tails = np.concatenate([owners, matched_gts + num_pred, np.full(len(free_preds), source)])
        heads = np.concatenate([gts + num_pred, self.gt_mate[matched_gts], free_preds])
        graph = sparse.csr_array(
            (np.ones(len(tails), dtype=np.int8), (tails, heads)), shape=(source + 1, source + 1)
        )
        reached = csgraph.breadth_first_order(graph, source, directed=True, return_predecessors=False)
        self.dead[:] = 0
        self.dead[reached[(reached >= num_pred) & (reached < source)] - num_pred] = 1

    def _greedy(self, preds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Activate prediction nodes (inactive, unmatched) and match each, in parallel rounds, to its nearest
        free gt; a gt wanted by several goes to the lowest node id. Returns the nodes left unmatched and
        whether each of them has a gt that is not dead."""
        self.active[preds] = 1
        owner, position = _ragged_positions(self.indptr, preds)
        gts = self.indices[position]
        open_ = np.ones(len(preds), dtype=bool)
        while True:  # augmenting paths of length 1, in parallel: each pred takes its nearest free gt
            candidate = open_[owner] & (self.gt_mate[gts] < 0)
            if not candidate.any():
                break
            first_owner, first = np.unique(owner[candidate], return_index=True)
            chosen = gts[candidate][first]
            taken, winner_at = np.unique(chosen, return_index=True)
            winners = first_owner[winner_at]
            self.gt_mate[taken] = preds[winners]
            self.pred_mate[preds[winners]] = taken
            open_[winners] = False
            self.size += len(winners)
        alive = np.zeros(len(preds), dtype=bool)
        np.logical_or.at(alive, owner, self.dead[gts] == 0)
        return preds[open_], alive[open_]

    def add(self, preds: np.ndarray) -> bool | None:
        """Activate prediction nodes (inactive, unmatched) and restore a maximum matching; None when a
        search ran past the work budget and max flow finished the job."""
        if preds.size == 0:
            return True
        unmatched, alive = self._greedy(preds)
        for pred in unmatched[alive].tolist():
            found = self._augment(pred)
            if found is None:
                self._maximise_by_flow()
                return None
            self.size += found
        return True

    def _augment(self, root: int) -> int | None:
        """Breadth-first search for a shortest augmenting path from the free pred ``root``: 1 if found (and
        applied), 0 if none (every gt reached is marked dead), None past the work budget (no change)."""
        start, end, neighbours = self._start, self._end, self._neighbours
        gt_mate, pred_mate, dead = self._gt_mate, self._pred_mate, self._dead
        reached_from: dict[int, int] = {}  # gt -> the pred next to it on the search tree
        queue = [root]
        for pred in queue:  # the queue grows while it is read
            for k in range(start[pred], end[pred]):
                gt = neighbours[k]
                if dead[gt] or gt in reached_from:
                    continue
                reached_from[gt] = pred
                mate = gt_mate[gt]
                if mate >= 0:
                    queue.append(mate)
                    continue
                while True:  # flip the path back to the root
                    pred = reached_from[gt]
                    previous = pred_mate[pred]
                    gt_mate[gt] = pred
                    pred_mate[pred] = gt
                    if pred == root:
                        return 1
                    gt = previous
            if len(queue) > self.work_budget:
                return None
        for gt in reached_from:
            dead[gt] = 1
        return 0

    def remove(self, preds: np.ndarray) -> None:
        """Deactivate prediction nodes and restore a maximum matching.

        Matched nodes are removed one at a time. Removing one frees its gt ``g``; the matching is maximum
        again unless an alternating path leads from a free active pred to ``g`` (any other augmenting path
        would have augmented the matching before). Every gt on such a path is reachable from a free pred,
        hence marked (invariant 3), so the backward search from ``g`` only walks marked gts; if it fails,
        ``g`` stays free and the marked gts that reach it, exactly those it walked (invariant 2), are
        revived.
        """
        if preds.size == 0:
            return
        self.active[preds] = 0
        gt_mate, pred_mate = self._gt_mate, self._pred_mate
        overflow = False
        for removed in preds[self.pred_mate[preds] >= 0].tolist():
            root = pred_mate[removed]
            gt_mate[root] = -1
            pred_mate[removed] = -1
            self.size -= 1
            if not overflow:
                found = self._reaugment(root)
                overflow = found is None
                self.size += found or 0
        if overflow:
            self._maximise_by_flow()

    def _reaugment(self, root: int) -> int | None:
        """Breadth-first search backwards from the free gt ``root`` through marked gts for a free active
        pred: 1 if found (and applied), 0 if none (the gts reached are revived), None past the work budget
        (no change). Nodes from ``limit`` on are inactive: a gt's preds are listed in node order."""
        start, preds_of = self._reverse_start, self._reverse_preds
        gt_mate, pred_mate, dead, active = self._gt_mate, self._pred_mate, self._dead, self._active
        limit = self.limit
        parent = {root: -1}  # gt -> the gt next to the pred it is the mate of
        queue = [root]
        for gt in queue:  # the queue grows while it is read
            for k in range(start[gt], start[gt + 1]):
                pred = preds_of[k]
                if pred >= limit:
                    break
                if not active[pred]:
                    continue
                mate = pred_mate[pred]
                if mate < 0:
                    while True:  # flip the path back to the root
                        previous = gt_mate[gt]
                        gt_mate[gt] = pred
                        pred_mate[pred] = gt
                        if gt == root:
                            return 1
                        pred, gt = previous, parent[gt]
                if dead[mate] and mate not in parent:
                    parent[mate] = gt
                    queue.append(mate)
            if len(queue) > self.work_budget:
                return None
        for gt in queue:
            dead[gt] = 0
        return 0


def _neighbour_csr(
    pred_ys: np.ndarray, pred_xs: np.ndarray, gt: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """CSR of the gt pixel ids within ``radius`` of each prediction pixel, nearest first.

    Ground-truth ids number ``np.nonzero(gt)`` in order.
    """
    reach = int(np.floor(radius))
    offsets = sorted(
        (
            (dy, dx)
            for dy in range(-reach, reach + 1)
            for dx in range(-reach, reach + 1)
            if dy * dy + dx * dx <= radius**2
        ),
        key=lambda o: (o[0] ** 2 + o[1] ** 2, o),
    )
    height, width = gt.shape
    stride = width + 2 * reach
    gt_id = np.full((height + 2 * reach) * stride, -1, dtype=np.int64)
    gys, gxs = np.nonzero(gt)
    gt_id[(gys + reach) * stride + gxs + reach] = np.arange(len(gys))
    shifts = np.array([dy * stride + dx for dy, dx in offsets], dtype=np.int64)
    centres = (pred_ys.astype(np.int64) + reach) * stride + pred_xs + reach
    counts, ids = [], []
    for begin in range(0, len(centres), _STENCIL_CHUNK):
        window = gt_id[centres[begin : begin + _STENCIL_CHUNK, None] + shifts[None, :]]
        hit = window >= 0
        counts.append(hit.sum(1))
        ids.append(window[hit])
    indptr = np.zeros(len(centres) + 1, dtype=np.int64)
    if counts:
        np.cumsum(np.concatenate(counts), out=indptr[1:])
    return indptr, (np.concatenate(ids) if ids else np.empty(0, dtype=np.int64))


def sweep_counts(
    edges: np.ndarray,
    gt: np.ndarray,
    radius: float,
    thresholds: np.ndarray,
    *,
    matching: str = "bsds",
    seed: int = 0,
) -> np.ndarray:
    """Counts of ``thin(edges > t)`` matched to ``gt`` within ``radius`` pixels, for every threshold.

    Args:
        edges: (H, W) float64 edge map (already NMS-ed and quantised).
        gt: (H, W) bool thinned ground-truth boundary.
        radius: matching radius in pixels.
        thresholds: (T,) strictly increasing.
        matching: ``"bsds"`` (the reference ``correspondPixels`` assignment, see
            :mod:`~tiger.metrics.boundary_bsds`) or ``"maximum"`` (a maximum-cardinality matching).
        seed: ``"bsds"`` only: threshold ``i`` draws its random outlier links from
            ``numpy.random.default_rng([seed, i])``.

    Returns:
        (4, T) int64: rows :data:`MATCHED_PRED`, :data:`NUM_PRED`, :data:`MATCHED_GT`, :data:`NUM_GT`.
    """
    check_matching(matching)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.ndim != 1 or thresholds.size == 0 or np.any(np.diff(thresholds) <= 0):
        raise ValueError(f"thresholds must be a non-empty strictly increasing 1-D array, got {thresholds}")
    num_thresholds = len(thresholds)
    counts = np.zeros((4, num_thresholds), dtype=np.int64)
    num_gt = int(gt.sum())
    counts[NUM_GT] = num_gt

    ys, xs = np.nonzero(edges > thresholds[0])
    level = np.searchsorted(thresholds, edges[ys, xs], side="left")  # on at thresholds[i] iff i < level
    order = np.argsort(-level, kind="stable")
    ys, xs, level = ys[order], xs[order], level[order]
    thinning = ThinningSweep(edges.shape)
    pixels = thinning.flat_index(ys, xs)
    # pixels[:batch_end[i]] are those on at thresholds[i]
    batch_end = np.searchsorted(-level, -np.arange(num_thresholds), side="left")

    # Pass 1, highest threshold to lowest (the image only grows): thinning, and how thin(E > t) changes.
    entered_at: list[np.ndarray] = [np.empty(0, dtype=np.intp)] * num_thresholds
    left_at: list[np.ndarray] = [np.empty(0, dtype=np.intp)] * num_thresholds
    done = 0
    for i in range(num_thresholds - 1, -1, -1):
        entered_at[i], left_at[i] = thinning.add(pixels[done : batch_end[i]])
        done = batch_end[i]
        counts[NUM_PRED, i] = thinning.count - len(thinning.deleted)
    if num_gt == 0 or len(ys) == 0:
        return counts

    # Pass 2, lowest threshold to highest: the matching, started exactly at the lowest threshold, then
    # updated as pixels leave thin(E > t) (mostly) and enter it (where thinning changes its mind).
    distance = ndi.distance_transform_edt(~gt)
    near = np.flatnonzero(np.rint(distance[ys, xs] ** 2) <= radius**2)
    node_of_pixel = np.full(thinning.on.size, -1, dtype=np.int64)
    node_of_pixel[pixels[near]] = np.arange(len(near))
    matcher = _IncrementalMatcher(*_neighbour_csr(ys[near], xs[near], gt, radius), num_gt)
    lowest = node_of_pixel[np.setdiff1d(pixels, thinning.deleted, assume_unique=True)]
    lowest = np.sort(lowest[lowest >= 0])
    # Nodes are numbered by decreasing level: those on at thresholds[i] are the first near_on[i].
    near_on = np.searchsorted(near, batch_end, side="left")
    # Initial matching: nodes added from the highest threshold's down, so it prefers them.
    matcher.initialise(np.split(lowest, np.searchsorted(lowest, near_on[:0:-1])))
    correspond = _BsdsCounter(matcher, ys[near], xs[near], gt, radius, seed) if matching == "bsds" else None
    for i in range(num_thresholds):
        if i > 0:
            matcher.limit = int(near_on[i])
            leaving, entering = node_of_pixel[entered_at[i - 1]], node_of_pixel[left_at[i - 1]]
            matcher.add(entering[entering >= 0])  # first: pixels entering sit next to those leaving
            matcher.remove(leaving[leaving >= 0])
        matched = matcher.size if correspond is None else correspond.count(i)
        counts[MATCHED_PRED, i] = counts[MATCHED_GT, i] = matched
    return counts


class _BsdsCounter:
    """The ``correspondPixels`` count at each threshold, from the sweep's current maximum matching.

    The real links and their costs ``rint(100 * distance)`` are those of the matcher's CSR (every
    prediction node is within the radius of a ground-truth pixel: the matchable ones).
    """

    def __init__(
        self,
        matcher: _IncrementalMatcher,
        pred_ys: np.ndarray,
        pred_xs: np.ndarray,
        gt: np.ndarray,
        radius: float,
        seed: int,
    ) -> None:
        self.matcher, self.seed = matcher, seed
        height = gt.shape[0]
        gys, gxs = np.nonzero(gt)
        self.pred_keys = pred_xs.astype(np.int64) * height + pred_ys
        self.gt_keys = gxs.astype(np.int64) * height + gys
        owner = matcher.entry_owner
        d2 = (gys[matcher.indices] - pred_ys[owner]) ** 2 + (gxs[matcher.indices] - pred_xs[owner]) ** 2
        self.entry_cost = np.rint(np.sqrt(d2) * MULTIPLIER).astype(np.int64)
        self.outlier_cost = outlier_weight(radius)

    def count(self, index: int) -> int:
        """The count at threshold ``index`` (the matcher holds that threshold's maximum matching)."""
        matcher = self.matcher
        active = np.flatnonzero(matcher.active)
        owner, position = _ragged_positions(matcher.indptr, active)
        return correspondence_count(
            self.pred_keys[active],
            self.gt_keys,
            owner,
            matcher.indices[position],
            self.entry_cost[position],
            matcher.pred_mate[active],
            np.random.default_rng([self.seed, index]),
            self.outlier_cost,
        )


def image_boundary_counts(
    prob: np.ndarray,
    gt: np.ndarray,
    max_dist: float,
    thresholds: np.ndarray = SEISM_THRESHOLDS,
    *,
    apply_nms: bool = True,
    matching: str = "bsds",
    seed: int = 0,
) -> np.ndarray:
    """The SEISM counts of one un-padded image at every threshold.

    Args:
        prob: (H, W) boundary probability in [0, 1] (float) or its uint8 PNG (``floor(prob * 255)``).
            Quantised to uint8 levels (truncation), then NMS-ed (unless ``apply_nms=False``).
        gt: (H, W) ground-truth boundary map (bool or {0, 1}); thinned here.
        max_dist: matching tolerance as a fraction of the image diagonal (NYUD 0.011, PASCAL 0.0075).
        thresholds: (T,) strictly increasing; the protocol's 101 by default.
        matching: ``"bsds"`` (default: the assignment of the reference ``correspondPixels``, see
            :mod:`~tiger.metrics.boundary_bsds`) or ``"maximum"`` (a maximum-cardinality matching).
        seed: ``"bsds"`` only: the seed of the random outlier links (threshold ``i`` uses
            ``numpy.random.default_rng([seed, i])``).

    Returns:
        (4, T) int64 counts, rows :data:`MATCHED_PRED`, :data:`NUM_PRED`, :data:`MATCHED_GT`,
        :data:`NUM_GT`.
    """
    if prob.ndim != 2 or prob.shape != gt.shape:
        raise ValueError(
            f"boundary prediction and ground truth must be (H, W) maps of one shape, got {prob.shape} and "
            f"{gt.shape}"
        )
    if gt.dtype != bool and not np.isin(gt, (0, 1)).all():
        raise ValueError(f"boundary ground truth must be binary {{0, 1}}, got values {np.unique(gt)[:10]}")
    if max_dist <= 0:
        raise ValueError(f"max_dist must be > 0 (a fraction of the image diagonal), got {max_dist}")
    check_matching(matching)
    edges = quantize_probability(prob)
    if apply_nms:
        edges = edge_nms(edges)
    radius = max_dist * float(np.hypot(*prob.shape))
    return sweep_counts(
        edges,
        thin(gt.astype(bool)),
        radius,
        np.asarray(thresholds, dtype=np.float64),
        matching=matching,
        seed=seed,
    )
