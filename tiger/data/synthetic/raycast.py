"""Vectorised ray casting of analytic primitives (planes, spheres, capsules, oriented boxes) with numpy.

Vectors are channel-first for speed: ray directions are (3, h, w), a stack of primitive parameters has
the primitives on its last axis. The camera sits at the origin of its frame (x right, y down, z forward).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

_EPS = 1e-4
_INF = np.float32(np.inf)


@dataclass
class Primitive:
    """One analytic surface of a scene and what the pixels that see it get.

    ``params`` (world or camera frame, metres): plane ``normal`` (pointing at the camera's side) and
    ``offset`` (normal . p = offset); sphere ``center``, ``radius``; capsule ``a``, ``b``, ``radius``;
    box ``center``, ``axes`` (3, 3) (rows: unit axes), ``half`` (3,) half extents. ``texture`` is the
    kind of albedo pattern (0: plain).
    """

    kind: str  # "plane" | "sphere" | "capsule" | "box"
    params: dict[str, np.ndarray]
    label: int
    instance: int
    part: int = 0
    color: np.ndarray = field(default_factory=lambda: np.ones(3, np.float32))
    texture: int = 0


# Ray casting, channel-first: ``d`` is (3, h, w) unit ray directions from the camera at the origin;
# each ``_t_<kind>`` returns the hit distance (h, w) (inf: no hit) of one primitive.

_KINDS = ("plane", "sphere", "capsule", "box")


def dot(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(3, ...) . (3, ...) -> (...), broadcasting."""
    return u[0] * v[0] + u[1] * v[1] + u[2] * v[2]


def _t_plane(d: np.ndarray, normal: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Plane {p : normal . p = offset}, ``normal`` pointing at the camera side."""
    denom = dot(d, normal)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = offset / denom
    t[~((denom < 0) & (t > _EPS))] = _INF
    return t


def _t_sphere(d: np.ndarray, center: np.ndarray, radius: np.ndarray) -> np.ndarray:
    b = dot(d, center)
    disc = b * b - (dot(center, center) - radius * radius)
    with np.errstate(invalid="ignore"):
        t = b - np.sqrt(disc)
    t[~((disc >= 0) & (t > _EPS))] = _INF
    return t


def _t_capsule(d: np.ndarray, a: np.ndarray, b: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """The capsule = the cylinder of ``radius`` around the segment a-b plus the spheres at its ends."""
    ba = b - a
    baba = dot(ba, ba)
    bard = dot(d, ba)
    baoa = -dot(ba, a)
    k2 = baba - bard * bard
    k1 = -baba * dot(d, a) - baoa * bard
    k0 = baba * dot(a, a) - baoa * baoa - radius * radius * baba
    disc = k1 * k1 - k2 * k0
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (-k1 - np.sqrt(disc)) / k2
    along = baoa + t * bard
    t[~((disc >= 0) & (k2 > 1e-9) & (t > _EPS) & (along > 0) & (along < baba))] = _INF
    return np.minimum(t, np.minimum(_t_sphere(d, a, radius), _t_sphere(d, b, radius)))


def _t_box(d: np.ndarray, center: np.ndarray, axes: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Oriented box (slab test): ``axes[k]`` is its k-th unit axis (3, ...), ``half[k]`` its half extent."""
    t_near, t_far = None, None
    for k in range(3):
        along = dot(d, axes[k])
        origin = -dot(axes[k], center)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / along
            t1 = (-half[k] - origin) * inv
            t2 = (half[k] - origin) * inv
        near, far = np.fmin(t1, t2), np.fmax(t1, t2)
        t_near = near if t_near is None else np.fmax(t_near, near)
        t_far = far if t_far is None else np.fmin(t_far, far)
    t_near[~((t_near <= t_far) & (t_near > _EPS))] = _INF
    return t_near


_HIT = {"plane": _t_plane, "sphere": _t_sphere, "capsule": _t_capsule, "box": _t_box}


def surface_normals(kind: str, points: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
    """Outward unit normals (3, k) at hit points (3, k) of primitives whose parameters ``p`` are (.., k)."""
    if kind == "plane":
        return p["normal"]
    if kind == "sphere":
        return (points - p["center"]) / p["radius"]
    if kind == "capsule":
        rel, ba = points - p["a"], p["b"] - p["a"]
        s = np.clip(dot(rel, ba) / dot(ba, ba), 0.0, 1.0)
        return (rel - s * ba) / p["radius"]
    rel = points - p["center"]
    local = [dot(rel, p["axes"][k]) for k in range(3)]
    face = np.argmax(np.stack([np.abs(local[k]) / p["half"][k] for k in range(3)]), axis=0)
    normal = np.zeros_like(points)
    for k in range(3):
        on_face = face == k
        normal[:, on_face] = np.sign(local[k][on_face]) * p["axes"][k][:, on_face]
    return normal


@dataclass
class Group:
    """The primitives of one kind in the camera frame; parameters stacked on their last axis (P)."""

    kind: str
    members: np.ndarray  # (P,) indices into the layout's primitive list
    params: dict[str, np.ndarray]

    def one(self, j: int) -> dict[str, np.ndarray]:
        return {k: v[..., j] for k, v in self.params.items()}

    def gather(self, local: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v[..., local] for k, v in self.params.items()}


def camera_groups(primitives: list[Primitive], rotation: np.ndarray, position: np.ndarray) -> list[Group]:
    """World-frame primitives -> per-kind groups in the camera frame (float32, channel-first)."""
    groups = []
    for kind in _KINDS:
        members = [i for i, p in enumerate(primitives) if p.kind == kind]
        if not members:
            continue
        world = {
            key: np.stack([primitives[i].params[key] for i in members], axis=-1)
            for key in primitives[members[0]].params
        }
        if kind == "plane":
            params = {
                "normal": rotation @ world["normal"],
                "offset": world["offset"] - position @ world["normal"],
            }
        elif kind == "box":
            axes = np.einsum("cw,kwp->kcp", rotation, world["axes"])  # axes[k]: (3, P)
            params = {
                "center": rotation @ (world["center"] - position[:, None]),
                "axes": axes,
                "half": world["half"],
            }
        else:
            params = {
                key: rotation @ (value - position[:, None]) if value.ndim == 2 else value
                for key, value in world.items()
            }
        params = {k: v.astype(np.float32) for k, v in params.items()}
        groups.append(Group(kind, np.array(members), params))
    return groups


def _screen_rect(
    kind: str, p: dict[str, np.ndarray], focal: float, size: tuple[int, int]
) -> tuple[slice, slice] | None:
    """Conservative pixel rectangle containing the primitive's projection (None: not visible)."""
    height, width = size
    full = (slice(0, height), slice(0, width))
    if kind == "plane":
        return full
    if kind == "sphere":
        center, radius = p["center"], float(p["radius"])
    elif kind == "capsule":
        center = (p["a"] + p["b"]) / 2
        radius = float(np.linalg.norm(p["b"] - p["a"])) / 2 + float(p["radius"])
    else:
        center, radius = p["center"], float(np.linalg.norm(p["half"]))
    if center[2] + radius <= _EPS:
        return None
    if center[2] - radius <= 1e-2:
        return full
    zs = (center[2] - radius, center[2] + radius)
    xs = [(center[0] + sx * radius) / z for sx in (-1, 1) for z in zs]
    ys = [(center[1] + sy * radius) / z for sy in (-1, 1) for z in zs]
    c0 = max(0, int(np.floor(focal * min(xs) + width / 2 - 0.5)))
    c1 = min(width, int(np.ceil(focal * max(xs) + width / 2 - 0.5)) + 1)
    r0 = max(0, int(np.floor(focal * min(ys) + height / 2 - 0.5)))
    r1 = min(height, int(np.ceil(focal * max(ys) + height / 2 - 0.5)) + 1)
    if c0 >= c1 or r0 >= r1:
        return None
    return slice(r0, r1), slice(c0, c1)


def ray_directions(size: tuple[int, int], focal: float) -> np.ndarray:
    """(3, H, W) float32 unit ray directions of a pinhole camera (x right, y down, z forward)."""
    height, width = size
    x = (np.arange(width, dtype=np.float32) + 0.5 - width / 2) / np.float32(focal)
    y = (np.arange(height, dtype=np.float32) + 0.5 - height / 2) / np.float32(focal)
    inv_norm = 1.0 / np.sqrt(x[None, :] ** 2 + y[:, None] ** 2 + 1.0)
    return np.stack(
        [x[None, :] * inv_norm, y[:, None] * inv_norm, np.broadcast_to(inv_norm, (height, width))]
    )


def cast(groups: list[Group], rays: np.ndarray, focal: float) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit per pixel: distance along the ray (H, W) float32 and primitive index (H, W) int32.

    One primitive at a time over its conservative screen rectangle (planes: the whole image).
    """
    size = rays.shape[1:]
    distance = np.full(size, _INF, dtype=np.float32)
    owner = np.full(size, -1, dtype=np.int32)
    for group in groups:
        for j, index in enumerate(group.members):
            params = group.one(j)
            rect = _screen_rect(group.kind, params, focal, size)
            if rect is None:
                continue
            t = _HIT[group.kind](rays[:, rect[0], rect[1]], **params)
            current = distance[rect]
            closer = t < current
            np.copyto(current, t, where=closer)
            np.copyto(owner[rect], index, where=closer)
    return distance, owner
