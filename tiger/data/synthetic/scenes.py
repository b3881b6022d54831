"""Procedural indoor scenes, ray cast with numpy: every task's ground truth comes from ONE scene description.

A scene is a room (floor, ceiling, four walls) with furniture built from boxes and spheres (cabinets,
tables, sofas, TV monitors, potted plants) and zero to two articulated people built from capsules and
spheres. Every pixel's ray is intersected analytically with every primitive (vectorised over the
pixels of the primitive's screen-space bounding rectangle), the nearest hit wins, and from that one
hit come the class, the instance, the body part, the metric depth, the surface normal and the
Lambertian-shaded, textured colour. Nothing is learned or downloaded.

Conventions:
    * depth: the z coordinate of the hit point in the camera frame, in metres (> 0 everywhere).
    * normals: unit vectors in the camera frame with **x to the right, y up and z towards the
      camera** (a wall facing the camera is (0, 0, 1), the floor is about (0, 1, 0)). A horizontal
      flip of the image negates x.
    * edge: a pixel is a boundary where its instance id differs from its right or bottom neighbour
      (PROTOCOL.md 4.4); walls, floor and ceiling are separate instances.
    * sal: the people when there are any, else the nearest furniture instance that covers at least 1% of
      the image (none in an empty room).
    * parts: the PASCAL-Part names (``head``, ``luarm``, ...) of each body primitive, merged into the
      6 groups of :data:`tiger.data.pascal.HUMAN_PART_GROUPS` (0 = background).
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

from tiger.data.pascal import HUMAN_PART_GROUPS
from tiger.data.synthetic.raycast import Primitive, camera_groups, cast, dot, ray_directions, surface_normals

SCENE_CLASSES = ("floor", "wall", "cabinet", "table", "sofa", "tvmonitor", "pottedplant", "person")
FLOOR, WALL, CABINET, TABLE, SOFA, TVMONITOR, PLANT, PERSON = range(len(SCENE_CLASSES))
NUM_SCENE_CLASSES = len(SCENE_CLASSES)
STRUCTURE_CLASSES = (FLOOR, WALL)

PART_NAMES = (
    "",
    "head",
    "neck",
    "torso",
    "ruarm",
    "luarm",
    "rlarm",
    "llarm",
    "rhand",
    "lhand",
    "ruleg",
    "luleg",
    "rlleg",
    "llleg",
    "rfoot",
    "lfoot",
)
"""Body-part names of the person primitives (index 0: not a body part), as PASCAL-Part spells them."""

_SPHERE_PARTS = ("head", "rhand", "lhand")
PART_GROUP_OF_NAME = np.array([0] + [HUMAN_PART_GROUPS[name] for name in PART_NAMES[1:]], dtype=np.uint8)

# Texture kinds (a multiplicative pattern on the albedo, evaluated at the world hit point).
TEX_PLAIN, TEX_PLANKS, TEX_TILES, TEX_WALL, TEX_DRAWERS, TEX_FABRIC, TEX_FOLIAGE, TEX_GRAIN = range(8)


@dataclass
class Scene:
    """A rendered scene; every array has the image's (H, W) size.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        semseg: (H, W) uint8 index into :data:`SCENE_CLASSES`.
        instance: (H, W) int32 instance id (>= 1).
        depth: (H, W) float32 metres.
        normals: (H, W, 3) float32 unit vectors (x right, y up, z towards the camera).
        part_name: (H, W) uint8 index into :data:`PART_NAMES`.
        parts: (H, W) uint8 part group 0..6.
        sal: (H, W) uint8 in {0, 1}.
        edge: (H, W) uint8 in {0, 1}.
        instance_class: instance id -> class index.
        focal: the focal length in pixels; the principal point is the image centre, so pixel (v, u)
            at depth z is the camera point ((u + 0.5 - W / 2) z / f, (v + 0.5 - H / 2) z / f, z) with
            y pointing down.
    """

    image: np.ndarray
    semseg: np.ndarray
    instance: np.ndarray
    depth: np.ndarray
    normals: np.ndarray
    part_name: np.ndarray
    parts: np.ndarray
    sal: np.ndarray
    edge: np.ndarray
    instance_class: dict[int, int]
    focal: float

    def instances_of(self, label: int) -> list[int]:
        """The ids of the visible instances of class ``label``, sorted."""
        visible = set(np.unique(self.instance).tolist())
        return sorted(i for i, c in self.instance_class.items() if c == label and i in visible)


def instance_boundaries(labels: np.ndarray) -> np.ndarray:
    """(H, W) labels -> (H, W) bool, True where a label differs from its right or bottom neighbour."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edge


# ----------------------------------------------------------------------------------------------------
# Scene description (world frame: x right, y forward, z up; the floor is z = 0).


@dataclass
class Layout:
    """A scene description: camera, light and primitives in the world frame."""

    focal_fraction: float  # focal length / image width
    cam_position: np.ndarray  # (3,)
    cam_rotation: np.ndarray  # (3, 3) world -> camera (rows: right, down, forward)
    light: np.ndarray  # (3,) world position of the point light
    primitives: list[Primitive]
    instance_class: dict[int, int]
    noise: float


def _camera_rotation(yaw: float, pitch: float) -> np.ndarray:
    forward = np.array([np.sin(yaw) * np.cos(pitch), np.cos(yaw) * np.cos(pitch), -np.sin(pitch)])
    right = np.array([np.cos(yaw), -np.sin(yaw), 0.0])
    down = np.cross(forward, right)
    return np.stack([right, down, forward]).astype(np.float64)


def _yaw_axes(yaw: float) -> np.ndarray:
    """(3, 3) rows: the local x, y, z axes of an object turned by ``yaw`` about the vertical."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


class _Builder:
    """Collects world-frame primitives and assigns instance ids."""

    def __init__(self) -> None:
        self.primitives: list[Primitive] = []
        self.instance_class: dict[int, int] = {}

    def new_instance(self, label: int) -> int:
        instance = len(self.instance_class) + 1
        self.instance_class[instance] = label
        return instance

    def add(self, kind: str, label: int, instance: int, color, texture=TEX_PLAIN, part=0, **params) -> None:
        params = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
        color = np.clip(np.asarray(color, dtype=np.float32), 0, 1)
        self.primitives.append(Primitive(kind, params, label, instance, part, color, texture))

    def box(self, label, instance, color, center, size, yaw=0.0, texture=TEX_PLAIN) -> None:
        self.add(
            "box",
            label,
            instance,
            color,
            texture,
            center=center,
            half=np.asarray(size) / 2,
            axes=_yaw_axes(yaw),
        )


def _person(builder: _Builder, rng: np.random.Generator, base: np.ndarray, yaw: float) -> None:
    """An articulated person (capsules and spheres) standing on the floor at ``base`` (x, y)."""
    height = rng.uniform(1.45, 1.9)
    instance = builder.new_instance(PERSON)
    skin = _hsv(rng.uniform(0.02, 0.09), rng.uniform(0.25, 0.6), rng.uniform(0.35, 0.95))
    shirt = _hsv(rng.uniform(), rng.uniform(0.4, 0.9), rng.uniform(0.35, 0.95))
    trousers = _hsv(rng.uniform(), rng.uniform(0.2, 0.7), rng.uniform(0.15, 0.55))
    shoes = _hsv(rng.uniform(), rng.uniform(0.0, 0.3), rng.uniform(0.05, 0.2))
    s = height
    segments: list[tuple[str, np.ndarray, np.ndarray, float, np.ndarray]] = []

    def direction(lateral: float, flex: float) -> np.ndarray:
        # a unit vector hanging down, swung ``flex`` forward (+y) and ``lateral`` sideways (+x)
        return np.array([np.sin(lateral), np.sin(flex) * np.cos(lateral), -np.cos(flex) * np.cos(lateral)])

    hip_z, shoulder_z = 0.5 * s, 0.8 * s
    for side, sign in (("r", 1.0), ("l", -1.0)):
        hip = np.array([sign * 0.055 * s, 0.0, hip_z])
        flex = rng.uniform(-0.45, 0.5)
        knee = hip + 0.245 * s * direction(sign * rng.uniform(0.0, 0.12), flex)
        ankle = knee + 0.235 * s * direction(sign * 0.02, flex - rng.uniform(0.0, 0.7))
        toe = ankle + np.array([0.0, 0.12 * s, -0.02 * s])
        segments += [
            (f"{side}uleg", hip, knee, 0.048 * s, trousers),
            (f"{side}lleg", knee, ankle, 0.036 * s, trousers * 0.85),
            (f"{side}foot", ankle - np.array([0, 0.02 * s, 0.01 * s]), toe, 0.026 * s, shoes),
        ]
        shoulder = np.array([sign * 0.12 * s, 0.0, shoulder_z])
        lateral = sign * rng.uniform(0.08, 0.9)
        flex = rng.uniform(-0.5, 1.1)
        elbow = shoulder + 0.17 * s * direction(lateral, flex)
        wrist = elbow + 0.15 * s * direction(lateral * 0.6, flex + rng.uniform(0.0, 1.4))
        hand = wrist + 0.03 * s * direction(lateral * 0.6, flex)
        segments += [
            (f"{side}uarm", shoulder, elbow, 0.032 * s, shirt),
            (f"{side}larm", elbow, wrist, 0.026 * s, skin),
            (f"{side}hand", hand, hand, 0.03 * s, skin),
        ]
    segments += [
        (
            "torso",
            np.array([0.0, 0.0, hip_z + 0.03 * s]),
            np.array([0.0, 0.0, shoulder_z - 0.03 * s]),
            0.1 * s,
            shirt,
        ),
        ("neck", np.array([0.0, 0.0, shoulder_z]), np.array([0.0, 0.0, 0.86 * s]), 0.03 * s, skin),
        ("head", np.array([0.0, 0.01 * s, 0.925 * s]), np.array([0.0, 0.01 * s, 0.925 * s]), 0.065 * s, skin),
    ]
    lowest = min(min(a[2], b[2]) - r for _, a, b, r, _ in segments)
    axes = _yaw_axes(yaw)
    offset = np.array([base[0], base[1], -lowest])
    for name, a, b, radius, color in segments:
        a_w, b_w = axes.T @ a + offset, axes.T @ b + offset
        part = PART_NAMES.index(name)
        if name in _SPHERE_PARTS:
            builder.add("sphere", PERSON, instance, color, part=part, center=a_w, radius=radius)
        else:
            builder.add("capsule", PERSON, instance, color, part=part, a=a_w, b=b_w, radius=radius)


@dataclass(frozen=True)
class _Room:
    """The room's box in the world frame, in metres: x in [-width / 2, width / 2], y in [0, depth], z in
    [0, height]; the camera stands near the front wall (y = 0) and looks towards the back wall (y = depth)."""

    width: float
    depth: float
    height: float

    @property
    def x_lo(self) -> float:
        """The left wall's x (metres)."""
        return -self.width / 2

    @property
    def x_hi(self) -> float:
        """The right wall's x (metres)."""
        return self.width / 2


@dataclass(frozen=True)
class _View:
    """The camera: ``position`` (3,) in metres, ``yaw`` (about the vertical, 0 = looking along +y) and
    ``pitch`` (downwards) in radians, ``hfov`` the horizontal field of view in radians."""

    position: np.ndarray
    yaw: float
    pitch: float
    hfov: float


def _sample_room(rng: np.random.Generator) -> _Room:
    """Draw the room's width, depth and height (metres)."""
    width, depth, height = rng.uniform(4.5, 8.0), rng.uniform(5.0, 9.0), rng.uniform(2.5, 3.2)
    return _Room(width, depth, height)


def _sample_view(rng: np.random.Generator, room: _Room) -> _View:
    """Draw the camera: 0.3 m in front of the front wall, 1.1-1.7 m high, looking slightly down."""
    position = np.array([rng.uniform(-0.3, 0.3) * room.width / 2, 0.3, rng.uniform(1.1, 1.7)])
    yaw, pitch = rng.uniform(-0.35, 0.35), rng.uniform(0.14, 0.42)
    hfov = np.deg2rad(rng.uniform(55.0, 65.0))
    return _View(position, yaw, pitch, hfov)


class _FloorPlan:
    """The floor footprints (x, y, radius in metres) of the objects placed so far; finds free spots."""

    def __init__(self, room: _Room, view: _View) -> None:
        self.room = room
        self.view = view
        self.footprints: list[tuple[float, float, float]] = []

    def _claim(self, x: float, y: float, radius: float) -> np.ndarray | None:
        """Record the disc (x, y, radius) and return its centre (2,) if it meets no footprint, else None."""
        if all(np.hypot(x - fx, y - fy) > radius + fr for fx, fy, fr in self.footprints):
            self.footprints.append((x, y, radius))
            return np.array([x, y])
        return None

    def free_spot(
        self, rng: np.random.Generator, radius: float, near: float = 1.6, far: float = 6.0
    ) -> np.ndarray | None:
        """A free (x, y) in view, ``near`` to ``far`` metres from the camera, whose disc of ``radius`` stays
        inside the room; None after 20 tries."""
        room, view = self.room, self.view
        for _ in range(20):
            dist = rng.uniform(near, min(far, room.depth - 0.5))
            angle = view.yaw + rng.uniform(-0.8, 0.8) * view.hfov / 2
            x, y = view.position[0] + dist * np.sin(angle), view.position[1] + dist * np.cos(angle)
            if not (room.x_lo + radius < x < room.x_hi - radius and 0.5 + radius < y < room.depth - radius):
                continue
            spot = self._claim(x, y, radius)
            if spot is not None:
                return spot
        return None

    def wall_spot(self, rng: np.random.Generator, width: float, depth: float) -> np.ndarray | None:
        """A free (x, y) for an object of ``width`` x ``depth`` metres against the back wall; None after 20
        tries."""
        for _ in range(20):
            x = rng.uniform(self.room.x_lo + width / 2, self.room.x_hi - width / 2)
            y = self.room.depth - depth / 2 - 0.01
            spot = self._claim(x, y, width / 2)
            if spot is not None:
                return spot
        return None


def _add_floor(builder: _Builder, rng: np.random.Generator) -> None:
    """The floor plane z = 0: wood, grey or blue, planks or tiles."""
    floor_color = [_hsv(0.08, 0.6, 0.55), _hsv(0.0, 0.0, 0.6), _hsv(0.6, 0.25, 0.45)][rng.integers(3)]
    floor_color = np.clip(floor_color * rng.uniform(0.8, 1.2), 0, 1)
    floor_texture = TEX_PLANKS if rng.random() < 0.5 else TEX_TILES
    builder.add(
        "plane", FLOOR, builder.new_instance(FLOOR), floor_color, floor_texture, normal=[0, 0, 1], offset=0.0
    )


def _add_ceiling_and_walls(builder: _Builder, rng: np.random.Generator, room: _Room) -> None:
    """The ceiling and the four walls (back, left, right, front), inward normals, one instance each."""
    wall_color = _hsv(rng.uniform(), rng.uniform(0.05, 0.35), rng.uniform(0.7, 0.95))
    ceiling = builder.new_instance(WALL)
    builder.add("plane", WALL, ceiling, [0.92, 0.92, 0.9], normal=[0, 0, -1], offset=-room.height)
    walls = (([0, -1, 0], -room.depth), ([1, 0, 0], room.x_lo), ([-1, 0, 0], -room.x_hi), ([0, 1, 0], 0.0))
    for normal, offset in walls:
        shade = rng.uniform(0.9, 1.05)
        builder.add(
            "plane",
            WALL,
            builder.new_instance(WALL),
            wall_color * shade,
            TEX_WALL,
            normal=normal,
            offset=offset,
        )


def _add_cabinet(builder: _Builder, rng: np.random.Generator, plan: _FloorPlan, tv_allowed: bool) -> bool:
    """A cabinet against the back wall; a low one may carry a TV when ``tv_allowed``. True when it got one."""
    w, dep, h = rng.uniform(0.5, 1.4), rng.uniform(0.35, 0.6), rng.uniform(0.5, 1.3)
    spot = plan.wall_spot(rng, w, dep)
    if spot is None:
        return False
    color = [_hsv(0.07, 0.6, 0.35), _hsv(0.1, 0.1, 0.88), _hsv(0.0, 0.0, 0.45)][rng.integers(3)]
    builder.box(
        CABINET, builder.new_instance(CABINET), color, [*spot, h / 2], [w, dep, h], texture=TEX_DRAWERS
    )
    if tv_allowed and h < 1.0 and rng.random() < 0.6:
        _add_tv_on_cabinet(builder, rng, spot, w, h)
        return True
    return False


def _add_tv_on_cabinet(
    builder: _Builder, rng: np.random.Generator, spot: np.ndarray, width: float, height: float
) -> None:
    """A TV monitor (screen and stand) on the cabinet at ``spot`` (x, y) of ``width`` x ``height`` metres."""
    tw, th = min(width * 0.9, rng.uniform(0.5, 1.1)), rng.uniform(0.3, 0.6)
    tv = builder.new_instance(TVMONITOR)
    builder.box(TVMONITOR, tv, [0.07, 0.07, 0.09], [spot[0], spot[1], height + th / 2 + 0.03], [tw, 0.06, th])
    builder.box(TVMONITOR, tv, [0.2, 0.2, 0.2], [spot[0], spot[1], height + 0.015], [0.25, 0.15, 0.03])


def _add_wall_tv(builder: _Builder, rng: np.random.Generator, room: _Room) -> None:
    """A TV monitor hung on the back wall, 1-1.6 m high."""
    tw, th = rng.uniform(0.6, 1.2), rng.uniform(0.35, 0.7)
    x = rng.uniform(room.x_lo + tw, room.x_hi - tw)
    z = rng.uniform(1.0, 1.6)
    builder.box(
        TVMONITOR,
        builder.new_instance(TVMONITOR),
        [0.07, 0.07, 0.09],
        [x, room.depth - 0.04, z],
        [tw, 0.06, th],
    )


def _add_table(builder: _Builder, rng: np.random.Generator, plan: _FloorPlan) -> None:
    """A table (a top and four legs) turned at random at a free spot; nothing when none is found."""
    w, dep, h = rng.uniform(0.8, 1.6), rng.uniform(0.6, 1.0), rng.uniform(0.68, 0.78)
    spot = plan.free_spot(rng, np.hypot(w, dep) / 2)
    if spot is None:
        return
    angle = rng.uniform(0, np.pi)
    axes = _yaw_axes(angle)
    color = _hsv(rng.uniform(0.05, 0.12), rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.8))
    table = builder.new_instance(TABLE)
    builder.box(TABLE, table, color, [*spot, h - 0.02], [w, dep, 0.04], angle, TEX_GRAIN)
    for sx in (-1, 1):
        for sy in (-1, 1):
            leg = axes.T @ np.array([sx * (w / 2 - 0.05), sy * (dep / 2 - 0.05), 0.0])
            center = [spot[0] + leg[0], spot[1] + leg[1], (h - 0.04) / 2]
            builder.box(TABLE, table, color * 0.8, center, [0.05, 0.05, h - 0.04], angle)


def _add_sofa(builder: _Builder, rng: np.random.Generator, plan: _FloorPlan) -> None:
    """A sofa (seat, back and two arms) facing the camera at a free spot; nothing when none is found."""
    w, dep = rng.uniform(1.4, 2.2), rng.uniform(0.8, 1.0)
    spot = plan.free_spot(rng, w / 2, near=2.5)
    if spot is None:
        return
    angle = plan.view.yaw + np.pi + rng.uniform(-0.5, 0.5)
    axes = _yaw_axes(angle)
    color = _hsv(rng.uniform(), rng.uniform(0.45, 0.85), rng.uniform(0.3, 0.75))
    sofa = builder.new_instance(SOFA)
    pieces = [  # (centre in the sofa's frame, size, shade), metres
        ([0, 0.05, 0.22], [w - 0.3, dep - 0.1, 0.44], 1.0),  # seat
        ([0, -dep / 2 + 0.1, 0.45], [w, 0.2, 0.9], 0.9),  # back
        *(([sx * (w / 2 - 0.075), 0.05, 0.3], [0.15, dep - 0.1, 0.6], 0.95) for sx in (-1, 1)),  # arms
    ]
    for offset, size, shade in pieces:
        center = axes.T @ np.asarray(offset, dtype=float)
        position = [spot[0] + center[0], spot[1] + center[1], center[2]]
        builder.box(SOFA, sofa, color * shade, position, size, angle, TEX_FABRIC)


def _add_plant(builder: _Builder, rng: np.random.Generator, plan: _FloorPlan) -> None:
    """A potted plant (a pot and one or two foliage spheres) at a free spot; nothing when none is found."""
    spot = plan.free_spot(rng, 0.4)
    if spot is None:
        return
    plant = builder.new_instance(PLANT)
    pot_h, pot_w = rng.uniform(0.25, 0.45), rng.uniform(0.22, 0.35)
    builder.box(
        PLANT, plant, [0.62, 0.32, 0.18], [*spot, pot_h / 2], [pot_w, pot_w, pot_h], rng.uniform(0, 1)
    )
    green = _hsv(rng.uniform(0.22, 0.38), rng.uniform(0.5, 0.85), rng.uniform(0.3, 0.6))
    radius = rng.uniform(0.2, 0.35)
    builder.add(
        "sphere", PLANT, plant, green, TEX_FOLIAGE, center=[*spot, pot_h + radius * 0.85], radius=radius
    )
    if rng.random() < 0.5:
        r2 = radius * rng.uniform(0.6, 0.85)
        center = [spot[0] + rng.uniform(-0.1, 0.1), spot[1], pot_h + radius * 1.6 + r2 * 0.5]
        builder.add("sphere", PLANT, plant, green * 1.1, TEX_FOLIAGE, center=center, radius=r2)


def _person_spot(rng: np.random.Generator, plan: _FloorPlan) -> np.ndarray:
    """Where a person stands (x, y): a free spot 2-4.5 m away, else 1.6-6 m away, else (a crowded room)
    3 m straight ahead of the camera regardless."""
    spot = plan.free_spot(rng, 0.4, near=2.0, far=4.5)
    if spot is None:
        spot = plan.free_spot(rng, 0.3, near=1.6, far=6.0)
    if spot is None:
        view = plan.view
        spot = view.position[:2] + 3.0 * np.array([np.sin(view.yaw), np.cos(view.yaw)])
    return spot


def _add_persons(
    builder: _Builder, rng: np.random.Generator, plan: _FloorPlan, num_persons: int | None
) -> None:
    """``num_persons`` people (0, 1 or 2 at random when None), each roughly facing the camera."""
    if num_persons is None:
        num_persons = int(rng.choice(3, p=[0.2, 0.55, 0.25]))
    camera = plan.view.position
    for _ in range(num_persons):
        spot = _person_spot(rng, plan)
        facing = np.arctan2(camera[0] - spot[0], camera[1] - spot[1]) + rng.uniform(-0.9, 0.9)
        _person(builder, rng, spot, -facing)


def sample_layout(rng: np.random.Generator, num_persons: int | None = None) -> Layout:
    """Draw a random room, camera, furniture and ``num_persons`` people (random 0-2 when None).

    The draws come in this order (a scene is reproducible only as long as it is kept): room, camera,
    floor, ceiling and walls, 0-2 cabinets (a TV on one of them, else perhaps on the wall), 0-2 tables,
    perhaps a sofa, 0-2 potted plants, the people, the light, the sensor noise.
    """
    builder = _Builder()
    room = _sample_room(rng)
    view = _sample_view(rng, room)
    _add_floor(builder, rng)
    _add_ceiling_and_walls(builder, rng, room)
    plan = _FloorPlan(room, view)
    tv_placed = False
    for _ in range(rng.integers(0, 3)):
        if _add_cabinet(builder, rng, plan, tv_allowed=not tv_placed):
            tv_placed = True
    if not tv_placed and rng.random() < 0.4:
        _add_wall_tv(builder, rng, room)
    for _ in range(rng.integers(0, 3)):
        _add_table(builder, rng, plan)
    if rng.random() < 0.5:
        _add_sofa(builder, rng, plan)
    for _ in range(rng.integers(0, 3)):
        _add_plant(builder, rng, plan)
    _add_persons(builder, rng, plan, num_persons)
    light = np.array(
        [
            rng.uniform(room.x_lo + 0.5, room.x_hi - 0.5),
            rng.uniform(1.0, room.depth - 1.0),
            room.height - 0.15,
        ]
    )
    return Layout(
        focal_fraction=float(0.5 / np.tan(view.hfov / 2)),
        cam_position=view.position,
        cam_rotation=_camera_rotation(view.yaw, view.pitch),
        light=light,
        primitives=builder.primitives,
        instance_class=builder.instance_class,
        noise=float(rng.uniform(1.0, 4.0)),
    )


def _hash(values: np.ndarray) -> np.ndarray:
    return np.modf(np.abs(np.sin(values * 12.9898 + 4.1414) * 43758.5453))[0]


def _texture(kind: int, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Multiplicative albedo pattern (k,) at the world points (x, y, z) (each (k,))."""
    if kind == TEX_PLANKS:
        board = np.floor(x / 0.18)
        seam = (x / 0.18 - board) < 0.06
        return np.where(seam, 0.55, 0.85 + 0.3 * _hash(board) + 0.04 * np.sin(35 * y + 3 * board))
    if kind == TEX_TILES:
        u, v = x / 0.5, y / 0.5
        grout = (np.abs(u - np.round(u)) < 0.03) | (np.abs(v - np.round(v)) < 0.03)
        checker = (np.floor(u) + np.floor(v)) % 2
        return np.where(grout, 0.6, 0.85 + 0.15 * checker)
    if kind == TEX_WALL:
        return np.where(z < 0.1, 0.65, 1.0 - 0.05 * np.sin(z * 2.0))
    if kind == TEX_DRAWERS:
        return np.where(np.modf(z / 0.3)[0] < 0.07, 0.55, 1.0)
    if kind == TEX_FABRIC:
        return 0.9 + 0.1 * np.sin(60 * x) * np.sin(60 * y) * np.sin(60 * z)
    if kind == TEX_FOLIAGE:
        return 0.75 + 0.25 * np.sin(31 * x + 5 * np.sin(13 * z)) * np.sin(
            27 * y + 4 * np.sin(11 * x)
        ) * np.sin(29 * z)
    if kind == TEX_GRAIN:
        return 0.92 + 0.08 * np.sin(45 * (x + 0.3 * y) + 2 * np.sin(7 * y))
    return np.ones_like(x)


def render(layout: Layout, size: tuple[int, int], rng: np.random.Generator) -> Scene:
    """Ray cast ``layout`` at ``size`` = (H, W); ``rng`` only draws the sensor noise."""
    height, width = size
    focal = layout.focal_fraction * width
    rays = ray_directions(size, focal)
    rotation, position = layout.cam_rotation, layout.cam_position
    groups = camera_groups(layout.primitives, rotation, position)
    distance, owner = cast(groups, rays, focal)
    if (owner < 0).any():
        raise AssertionError("a camera ray left the closed room; the layout is inconsistent")
    points = distance * rays  # (3, H, W) camera frame
    depth = points[2].copy()

    # Normals of the winning primitives, one vectorised pass per kind.
    num = len(layout.primitives)
    group_of, local_of = np.empty(num, dtype=np.int8), np.empty(num, dtype=np.int64)
    for g, group in enumerate(groups):
        group_of[group.members], local_of[group.members] = g, np.arange(len(group.members))
    owner_group = group_of.take(owner)
    normals = np.zeros((3, height, width), dtype=np.float32)
    for g, group in enumerate(groups):
        mask = owner_group == g
        if mask.any():
            normals[:, mask] = surface_normals(
                group.kind, points[:, mask], group.gather(local_of.take(owner[mask]))
            )
    normals *= 1.0 / np.sqrt(normals[0] ** 2 + normals[1] ** 2 + normals[2] ** 2)

    primitives = layout.primitives
    labels = np.array([p.label for p in primitives], dtype=np.uint8)
    instances = np.array([p.instance for p in primitives], dtype=np.int32)
    part_of = np.array([p.part for p in primitives], dtype=np.uint8)
    colors = np.stack([p.color for p in primitives], axis=1).astype(np.float32)  # (3, P)
    textures = np.array([p.texture for p in primitives])
    semseg, instance, part_name = labels.take(owner), instances.take(owner), part_of.take(owner)

    # Colour: textured albedo x (ambient + Lambertian point light), plus sensor noise.
    albedo = np.take(colors, owner, axis=1)
    world = [
        points[0] * rotation[0, k] + points[1] * rotation[1, k] + points[2] * rotation[2, k] + position[k]
        for k in range(3)
    ]  # camera -> world (the rotation is orthonormal)
    visible = np.flatnonzero(np.bincount(owner.ravel(), minlength=num))
    for kind in sorted({int(textures[i]) for i in visible} - {TEX_PLAIN}):
        mask = textures.take(owner) == kind
        albedo[:, mask] *= _texture(kind, *(w[mask] for w in world)).astype(np.float32)
    light = (rotation @ (layout.light - position)).astype(np.float32)
    to_light = light[:, None, None] - points
    light_dist = np.sqrt(dot(to_light, to_light))
    lambert = np.maximum(dot(normals, to_light) / light_dist, 0.0)
    shade = (0.3 + 0.9 * lambert / (1.0 + 0.04 * light_dist**2)) * 255.0
    shade += 0.5  # rounding
    noise = rng.standard_normal(size, dtype=np.float32) * np.float32(layout.noise)
    image = np.empty((height, width, 3), dtype=np.uint8)
    for k in range(3):
        np.clip(albedo[k] * shade + noise, 0, 255, out=albedo[k])
        image[..., k] = albedo[k]

    persons = [i for i, c in layout.instance_class.items() if c == PERSON]
    sal = np.isin(instance, persons) if persons else _nearest_object(instance, depth, layout.instance_class)
    normals[1:] *= -1.0  # -> x right, y up, z towards the camera
    return Scene(
        image=image,
        semseg=semseg,
        instance=instance,
        depth=depth,
        normals=np.ascontiguousarray(normals.transpose(1, 2, 0)),
        part_name=part_name,
        parts=PART_GROUP_OF_NAME.take(part_name),
        sal=sal.astype(np.uint8),
        edge=instance_boundaries(instance).astype(np.uint8),
        instance_class=dict(layout.instance_class),
        focal=float(focal),
    )


def _nearest_object(instance: np.ndarray, depth: np.ndarray, instance_class: dict[int, int]) -> np.ndarray:
    """The mask of the nearest furniture instance covering >= 1% of the image (all False if none)."""
    count = np.bincount(instance.ravel(), minlength=len(instance_class) + 1)
    depth_sum = np.bincount(instance.ravel(), weights=depth.ravel(), minlength=len(instance_class) + 1)
    best, best_depth = 0, np.inf
    for inst, label in instance_class.items():
        if label in STRUCTURE_CLASSES or count[inst] < 0.01 * instance.size:
            continue
        mean = depth_sum[inst] / count[inst]
        if mean < best_depth:
            best, best_depth = inst, mean
    return instance == best if best else np.zeros(instance.shape, dtype=bool)


def generate_scene(seed: int, index: int, size: tuple[int, int], num_persons: int | None = None) -> Scene:
    """Scene number ``index`` of the stream ``seed``, deterministic for (seed, index, size, num_persons)."""
    rng = np.random.default_rng([seed, index])
    layout = sample_layout(rng, num_persons=num_persons)
    return render(layout, size, rng)
