"""The assignment graph of the BSDS ``correspondPixels`` matcher, and its optimum (``matching="bsds"``).

SEISM scores boundaries with the BSDS benchmark's ``correspondPixels`` (``match.cc``), which does not find a
maximum matching: it solves a min-cost *perfect* assignment (Goldberg's CSA) on a graph whose links to
"outlier" nodes are a sparse random graph. This module builds that graph rule for rule and finds the
matched count of its optimum.

The graph of one thresholded map (rules read from ``match.cc`` and the ``correspondPixels`` mex wrapper):

* Nodes. Only *matchable* pixels are nodes: a prediction (ground-truth) pixel with at least one
  ground-truth (prediction) pixel within the radius, ``dy^2 + dx^2 <= radius^2``. Nodes are numbered in
  column-major pixel order: prediction nodes ``0..n1-1``, ground-truth nodes ``0..n2-1``. The assignment
  has ``n = n1 + n2`` nodes a side: left = prediction nodes, then ``n2`` outlier nodes ``n1 + j`` (one per
  ground-truth node); right = ground-truth nodes, then ``n1`` outlier nodes ``n2 + i``.
* Real links: every pair within the radius, cost ``rint(100 * distance)`` (integer costs, x100).
* Outlier links, cost ``ow = ceil(100 * outlier_cost)`` with ``outlier_cost = 100 * radius`` (the default
  outlierCost, a multiple of maxDist): each prediction node ``i`` links to ``d1 = min(6, n1 - 1)`` right
  outliers ``n2 + j``, ``j`` a uniform random subset of the other prediction indices (``j != i``); each
  ground-truth node ``j`` to ``d2 = min(6, n2 - 1)`` left outliers ``n1 + i``, ``i != j``; each outlier of
  the larger side to ``d3 = min(6, n1, n2)`` random outliers of the smaller side.
* The "perfect-match overlay", which guarantees a perfect assignment exists: ``i -- n2 + i`` and
  ``n1 + j -- j`` at cost ``100 * ow``.

An optimum's real links are the matched pairs. Its cost is ``sum(real costs) + ow * (n - k) + 99 * ow *
(overlay links)``, ``k`` the matched pairs, so a pair lost costs ``ow`` (about 100 pixel-distances) and
an overlay link 99 more; but where the sparse outlier graph cannot absorb the unmatched pixels, the
optimum gives up pairs (typically a few per 10,000). Ours and the reference differ in one way only: the
reference draws its random subsets from a generator seeded by the clock (so its counts vary from run to
run), ours from numpy's PCG64 seeded with ``(seed, threshold index)`` (so our counts are reproducible); the
subsets have the same law (uniform, independent per node).

Solvers. :func:`min_cost_count` solves the assignment with scipy's LAPJVsp
(:func:`scipy.sparse.csgraph.min_weight_full_bipartite_matching`), the problem CSA solves. From scratch it
takes 0.3-3 s per threshold on a 425x560 map (Google OR-tools' cost-scaling solver, CSA's descendant, is
no faster), too slow for 101 thresholds; it serves graphs of at most :data:`EXACT_NODES` nodes a side and
the tests. :func:`lexicographic_count` is the fast path: an optimum of the costs counted in units of
``ow`` (real 0, outlier 1, overlay 100), which fixes the matched count (``n - outlier links - overlay
links``); distances only choose among those optima. The two counts can differ only if giving up a pair
saved more than ``ow`` of distance, which needs an alternating cycle of about 100 pairs, each lengthened;
the tests compare both at every threshold of random maps. It is the Hungarian primal-dual method: start
from the sweep's maximum matching of the real links and its Koenig cover (optimal duals were outliers
unconstrained; if the outliers then take every unmatched pixel, that is the optimum), then alternate
breadth-first searches of the tight links (scipy, in C), augmenting along disjoint paths, and dual steps;
it ends with an LP optimality certificate (dual feasible, perfect, tight) that is checked.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

MULTIPLIER = 100  # match.cc: costs are rint(distance * 100), integers for CSA
OUTLIER_COST = 100  # correspondPixels' default outlierCost, a multiple of the radius
DEGREE = 6  # match.cc: the degree of the random outlier links
EXACT_NODES = 400  # graphs with at most this many nodes a side are solved by min_cost_count

# Link kinds, and their cost in units of the outlier cost for the lexicographic solve.
REAL, OUTLIER, OVERLAY = 0, 1, 2
_UNIT_COST = np.array([0, 1, MULTIPLIER], dtype=np.int64)

_BSDS_MATCHINGS = ("bsds", "maximum")


def check_matching(matching: str) -> str:
    """``matching`` if it is a known mode, else a ValueError naming the option and its values."""
    if matching not in _BSDS_MATCHINGS:
        raise ValueError(f"matching must be one of {', '.join(map(repr, _BSDS_MATCHINGS))}, got {matching!r}")
    return matching


def outlier_weight(radius: float) -> int:
    """The integer cost of an outlier link, ``ceil(100 * (100 * radius))`` (radius in pixels)."""
    return math.ceil(OUTLIER_COST * radius * MULTIPLIER)


def random_subsets(rng: np.random.Generator, rows: int, k: int, n: int) -> np.ndarray:
    """(rows, k) int64: each row ``k`` distinct integers of ``[0, n)``, a uniform random subset.

    Small ``n``: the first ``k`` of a random permutation; otherwise draws with replacement, rows with a
    repeat drawn again (rejection keeps each row uniform over subsets).
    """
    if k > n:
        raise ValueError(f"cannot draw {k} distinct values from {n}")
    if rows == 0 or k == 0:
        return np.zeros((rows, k), dtype=np.int64)
    if n <= 4 * k + 16:
        return np.argsort(rng.random((rows, n)), axis=1)[:, :k].astype(np.int64)
    values = rng.integers(0, n, size=(rows, k), dtype=np.int64)
    redraw = np.arange(rows)
    while redraw.size:
        ordered = np.sort(values[redraw], axis=1)
        repeated = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
        redraw = redraw[repeated]
        values[redraw] = rng.integers(0, n, size=(redraw.size, k), dtype=np.int64)
    return values


def outlier_links(n1: int, n2: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The outlier and overlay links of ``match.cc``, drawn from ``rng`` in a fixed order.

    Returns:
        (left, right, kind) int64 arrays: left node in ``[0, n)`` (prediction nodes, then left outliers),
        right node in ``[0, n)`` (ground-truth nodes, then right outliers), kind :data:`OUTLIER` or
        :data:`OVERLAY`.
    """
    d1, d2, d3 = max(0, min(DEGREE, n1 - 1)), max(0, min(DEGREE, n2 - 1)), min(DEGREE, n1, n2)
    # each prediction node i: d1 of the other n1 - 1 right outliers n2 + j (j != i)
    others = random_subsets(rng, n1, d1, n1 - 1) if n1 else np.zeros((0, 0), dtype=np.int64)
    own = np.arange(n1)[:, None]
    p_left, p_right = np.repeat(np.arange(n1), d1), n2 + (others + (others >= own)).ravel()
    # each ground-truth node j: d2 of the other n2 - 1 left outliers n1 + i (i != j)
    others = random_subsets(rng, n2, d2, n2 - 1) if n2 else np.zeros((0, 0), dtype=np.int64)
    own = np.arange(n2)[:, None]
    g_left, g_right = n1 + (others + (others >= own)).ravel(), np.repeat(np.arange(n2), d2)
    # each outlier of the larger side: d3 outliers of the smaller side
    larger, smaller = max(n1, n2), min(n1, n2)
    picks = random_subsets(rng, larger, d3, smaller).ravel()
    rows = np.repeat(np.arange(larger), d3)
    if n1 < n2:
        o_left, o_right = n1 + rows, n2 + picks
    else:
        o_left, o_right = n1 + picks, n2 + rows
    left = np.concatenate([p_left, g_left, o_left, np.arange(n1), n1 + np.arange(n2)])
    right = np.concatenate([p_right, g_right, o_right, n2 + np.arange(n1), np.arange(n2)])
    kind = np.full(len(left), OUTLIER, dtype=np.int64)
    kind[len(left) - n1 - n2 :] = OVERLAY
    return left.astype(np.int64), right.astype(np.int64), kind


def min_cost_count(
    n1: int, n2: int, left: np.ndarray, right: np.ndarray, cost: np.ndarray
) -> tuple[int, int]:
    """Solve the assignment from scratch (scipy's LAPJVsp): (matched pairs, total cost).

    Args:
        left, right, cost: (m,) links of the ``(n1 + n2)``-node-a-side graph and their integer costs.
    """
    n = n1 + n2
    if n == 0:
        return 0, 0
    # weights must be non-zero: every perfect assignment has n links, so adding 1 to each changes nothing
    graph = sparse.csr_array((cost.astype(np.float64) + 1.0, (left, right)), shape=(n, n))
    rows, cols = csgraph.min_weight_full_bipartite_matching(graph)
    total = int(round(graph[rows, cols].sum())) - n
    return int(((rows < n1) & (cols < n2)).sum()), total


def _koenig_start(
    n1: int, n2: int, real_p: np.ndarray, real_g: np.ndarray, p_mate: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The Koenig cover of a real matching as 0/1 marks (prediction in cover, ground truth in cover).

    The cover is (predictions not reached) + (ground truths reached) by alternating paths from the
    unmatched predictions; with any matching these marks give dual-feasible potentials on which the
    matching is tight (see :func:`lexicographic_count`).
    """
    matched = np.flatnonzero(p_mate >= 0)
    source = n1 + n2
    free = np.flatnonzero(p_mate < 0)
    tails = np.concatenate([real_p, n1 + p_mate[matched], np.full(len(free), source)])
    heads = np.concatenate([n1 + real_g, matched, free])
    graph = sparse.csr_array(
        (np.ones(len(tails), dtype=np.int8), (tails, heads)), shape=(source + 1, source + 1)
    )
    reached = np.zeros(source + 1, dtype=bool)
    reached[csgraph.breadth_first_order(graph, source, directed=True, return_predecessors=False)] = True
    return (~reached[:n1]).astype(np.int64), reached[n1:source].astype(np.int64)


def _csr(tails: np.ndarray, heads: np.ndarray, size: int) -> sparse.csr_array:
    """A (size, size) 0/1 float64 CSR matrix of the arcs ``tails -> heads``: ``tails`` sorted, no arc
    repeated. Built directly and marked canonical (no repeats), so scipy's graph routines neither copy,
    re-sort nor sum duplicates."""
    indptr = np.zeros(size + 1, dtype=np.int32)
    np.cumsum(np.bincount(tails, minlength=size), out=indptr[1:])
    graph = sparse.csr_array((np.ones(len(tails)), heads.astype(np.int32), indptr), shape=(size, size))
    graph.has_canonical_format = True
    return graph


class _TightMatching:
    """A matching of an n-by-n bipartite graph, grown over the tight links (reduced cost 0)."""

    def __init__(self, n: int, left: np.ndarray, right: np.ndarray) -> None:
        self.n, self.left, self.right = n, left, right
        self.left_mate = np.full(n, -1, dtype=np.int64)
        self.right_mate = np.full(n, -1, dtype=np.int64)

    def _residual(self, tight: np.ndarray) -> sparse.csr_array:
        """Residual network: tight unmatched left -> right, matched right -> left, source -> free left.
        Node ids: left 0..n-1, right n..2n-1, source 2n. The links are sorted by left node (see
        :func:`lexicographic_count`), so the arcs come sorted by tail."""
        n = self.n
        lefts, rights = self.left[tight], self.right[tight]
        unmatched = self.left_mate[lefts] != rights
        matched_right = np.flatnonzero(self.right_mate >= 0)
        free_left = np.flatnonzero(self.left_mate < 0)
        tails = np.concatenate([lefts[unmatched], n + matched_right, np.full(len(free_left), 2 * n)])
        heads = np.concatenate([n + rights[unmatched], self.right_mate[matched_right], free_left])
        return _csr(tails, heads, 2 * n + 1)

    def search(self, tight: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """One breadth-first search of the residual network from the free left nodes (scipy, in C).

        If it reaches free right nodes, the matching is augmented along vertex-disjoint paths of the search
        forest (at least one). Returns (left, right) bool masks of the nodes reached, and whether it
        augmented; when it did not, the matching is maximum on the tight links.
        """
        n = self.n
        source = 2 * n
        order, parent = csgraph.breadth_first_order(
            self._residual(tight), source, directed=True, return_predecessors=True
        )
        reached = np.zeros(2 * n + 1, dtype=bool)
        reached[order] = True
        ends = np.flatnonzero(reached[n : 2 * n] & (self.right_mate < 0))
        used: set[int] = set()
        for end in ends.tolist():
            path, node = [], n + end  # right, left, right, left, ..., the free left
            while node != source:
                path.append(node)
                node = int(parent[node])
            if used.intersection(path):
                continue
            used.update(path)
            for right, left in zip(path[0::2], path[1::2], strict=True):
                self.left_mate[left] = right - n
                self.right_mate[right - n] = left
        return reached[:n], reached[n : 2 * n], bool(used)


def _complete_outliers(
    n1: int, n2: int, left: np.ndarray, right: np.ndarray, kind: np.ndarray, matching: _TightMatching
) -> bool:
    """Match the unmatched nodes and all outliers by outlier links (a maximum matching of that graph,
    scipy's Hopcroft-Karp); True if all of them are matched."""
    n = n1 + n2
    left_mate, right_mate = matching.left_mate, matching.right_mate
    usable = (kind == OUTLIER) & (left_mate[left] < 0) & (right_mate[right] < 0)
    graph = sparse.csr_array(
        (np.ones(int(usable.sum()), dtype=np.int8), (left[usable], right[usable])), shape=(n, n)
    )
    mates = csgraph.maximum_bipartite_matching(graph, perm_type="column")  # right mate of each left
    taken = mates >= 0
    left_mate[taken] = mates[taken]
    right_mate[mates[taken]] = np.flatnonzero(taken)
    return bool((left_mate >= 0).all())


def lexicographic_count(
    n1: int,
    n2: int,
    left: np.ndarray,
    right: np.ndarray,
    kind: np.ndarray,
    p_mate: np.ndarray,
) -> int:
    """Matched pairs of an optimum of the assignment with costs in outlier units (real 0, outlier 1,
    overlay 100), by the Hungarian primal-dual method.

    Args:
        left, right, kind: (m,) links of the ``(n1 + n2)``-node-a-side graph (real links first is not
            required); real links join prediction ``left < n1`` to ground truth ``right < n2``.
        p_mate: (n1,) a matching of the real links (e.g. a maximum one): ground-truth node or -1.

    Start: potentials ``u`` (left), ``v`` (right) from the Koenig marks ``y`` (prediction), ``z`` (ground
    truth) of ``p_mate``: ``u = 1 - y`` on predictions, 1 on left outliers, ``v = -z`` on ground truths,
    0 on right outliers. Every reduced cost ``cost - u - v`` is then >= 0 (real ``y + z - 1``, outlier
    links ``y``, ``z`` or 0) and 0 on the matched pairs. Each round grows the matching to a maximum one of
    the tight links; if it is not perfect, the potentials move by the least reduced cost leaving the set
    reached from the free left nodes. The end is checked: dual feasible, perfect and tight.
    """
    n = n1 + n2
    if n1 == 0 or n2 == 0:
        return 0
    matching = _TightMatching(n, left, right)
    matched = np.flatnonzero(p_mate >= 0)
    matching.left_mate[matched] = p_mate[matched]
    matching.right_mate[p_mate[matched]] = matched
    if _complete_outliers(n1, n2, left, right, kind, matching):
        # cost n - |p_mate|: the least possible even with unconstrained outliers, p_mate being maximum
        return len(matched)
    order = np.argsort(left, kind="stable")  # the residual networks are built sorted by tail
    left, right, kind = left[order], right[order], kind[order]
    matching.left, matching.right = left, right
    cost = _UNIT_COST[kind]
    in_cover_p, in_cover_g = _koenig_start(n1, n2, left[kind == REAL], right[kind == REAL], p_mate)
    u = np.concatenate([1 - in_cover_p, np.ones(n2, dtype=np.int64)])
    v = np.concatenate([-in_cover_g, np.zeros(n1, dtype=np.int64)])
    reduced = cost - u[left] - v[right]
    # Each round augments (<= n times) or raises the dual objective by >= 1 (it starts >= -n and cannot
    # pass the overlay assignment's cost, 100 n): a bound that turns a bug into an error, not a hang.
    for _ in range((int(_UNIT_COST[OVERLAY]) + 3) * n):
        if (matching.left_mate >= 0).all():
            break
        reached_left, reached_right, augmented = matching.search(reduced == 0)
        if augmented:
            continue
        leaving = reached_left[left] & ~reached_right[right]
        step = int(reduced[leaving].min()) if leaving.any() else 0
        if step <= 0:  # > 0 by construction: no tight link leaves the reached set
            raise RuntimeError(f"bsds matching: a dual step of {step} (a bug)")
        u[reached_left] += step
        v[reached_right] -= step
        reduced = cost - u[left] - v[right]
    else:
        raise RuntimeError("bsds matching: no perfect assignment after the bound on rounds (a bug)")
    reduced = cost - u[left] - v[right]
    mates = matching.left_mate
    if reduced.min() < 0 or (reduced[mates[left] == right] != 0).sum() != 0:
        raise RuntimeError("bsds matching: the optimality certificate failed (a bug)")
    return int((mates[:n1] < n2).sum())


def correspondence_count(
    pred_keys: np.ndarray,
    gt_keys: np.ndarray,
    real_p: np.ndarray,
    real_g: np.ndarray,
    real_cost: np.ndarray,
    p_mate: np.ndarray,
    rng: np.random.Generator,
    outlier_cost: int,
) -> int:
    """Matched pairs of ``correspondPixels`` on one thresholded map.

    Args:
        pred_keys: (P,) column-major position (``x * H + y``) of each prediction pixel that has a
            ground-truth pixel within the radius (the matchable ones).
        gt_keys: (G,) the same for ground-truth pixels (any: those with no real link are dropped).
        real_p, real_g: (E,) the real links, indices into ``pred_keys`` and ``gt_keys``.
        real_cost: (E,) their costs ``rint(100 * distance)``.
        p_mate: (P,) a matching of the real links (index into ``gt_keys`` or -1), maximum for speed.
        rng: the generator of the random outlier links.
        outlier_cost: :func:`outlier_weight` of the radius.
    """
    if len(real_p) == 0:
        return 0
    # nodes in column-major order, as match.cc numbers them
    pred_order = np.argsort(pred_keys, kind="stable")
    pred_node = np.empty(len(pred_keys), dtype=np.int64)
    pred_node[pred_order] = np.arange(len(pred_keys))
    matchable = np.zeros(len(gt_keys), dtype=bool)
    matchable[real_g] = True
    matchable_gt = np.flatnonzero(matchable)
    gt_order = matchable_gt[np.argsort(gt_keys[matchable_gt], kind="stable")]
    gt_node = np.full(len(gt_keys), -1, dtype=np.int64)
    gt_node[gt_order] = np.arange(len(gt_order))
    n1, n2 = len(pred_keys), len(gt_order)
    links_left, links_right, links_kind = outlier_links(n1, n2, rng)
    left = np.concatenate([pred_node[real_p], links_left])
    right = np.concatenate([gt_node[real_g], links_right])
    if n1 + n2 <= EXACT_NODES:
        cost = np.concatenate(
            [real_cost, np.where(links_kind == OVERLAY, outlier_cost * MULTIPLIER, outlier_cost)]
        )
        return min_cost_count(n1, n2, left, right, cost)[0]
    kind = np.concatenate([np.full(len(real_p), REAL, dtype=np.int64), links_kind])
    mate = np.full(n1, -1, dtype=np.int64)
    matched = p_mate >= 0
    mate[pred_node[matched]] = gt_node[p_mate[matched]]
    return lexicographic_count(n1, n2, left, right, kind, mate)
