"""The procedural scenes: determinism and consistency of every task with the one scene geometry."""

from __future__ import annotations

import numpy as np
import pytest

from tiger.data.pascal import HUMAN_PART_GROUPS
from tiger.data.synthetic.scenes import (
    FLOOR,
    PART_NAMES,
    PERSON,
    SCENE_CLASSES,
    STRUCTURE_CLASSES,
    WALL,
    generate_scene,
    instance_boundaries,
)

SIZE = (60, 80)


@pytest.fixture(scope="module")
def scenes():
    return [generate_scene(7, i, SIZE) for i in range(12)]


def camera_points(scene) -> np.ndarray:
    """(H, W, 3) back-projected points, camera frame x right, y down, z forward."""
    height, width = scene.depth.shape
    u = (np.arange(width) + 0.5 - width / 2) / scene.focal
    v = (np.arange(height) + 0.5 - height / 2) / scene.focal
    z = scene.depth.astype(np.float64)
    return np.stack([u[None, :] * z, v[:, None] * z, z], axis=-1)


def test_deterministic_per_seed_and_index():
    a, b = generate_scene(1, 4, SIZE), generate_scene(1, 4, SIZE)
    for field in ("image", "semseg", "instance", "depth", "normals", "parts", "sal", "edge"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.image, generate_scene(1, 5, SIZE).image)
    assert not np.array_equal(a.image, generate_scene(2, 4, SIZE).image)


def test_formats_and_value_ranges(scenes):
    for s in scenes:
        assert s.image.shape == (*SIZE, 3) and s.image.dtype == np.uint8
        assert s.semseg.max() < len(SCENE_CLASSES)
        assert (s.depth > 0).all() and np.isfinite(s.depth).all()
        np.testing.assert_allclose(np.linalg.norm(s.normals, axis=-1), 1.0, atol=1e-4)
        assert set(np.unique(s.sal)) <= {0, 1} and set(np.unique(s.edge)) <= {0, 1}
    classes = set(np.concatenate([np.unique(s.semseg) for s in scenes]).tolist())
    assert classes == set(range(len(SCENE_CLASSES)))  # every class shows up in a dozen scenes


def test_normals_face_the_camera(scenes):
    for s in scenes:
        view = camera_points(s) * np.array([1, -1, -1])  # -> the normals' frame (y up, z to the camera)
        view /= np.linalg.norm(view, axis=-1, keepdims=True)
        assert ((s.normals * view).sum(-1) < 1e-3).all()  # n . (ray direction) <= 0


def test_depth_and_normals_agree_on_planes(scenes):
    """Floor and wall pixels, back-projected with their depth, lie on planes with the given normal."""
    for s in scenes:
        points = camera_points(s) * np.array([1, -1, -1])
        for inst, label in s.instance_class.items():
            mask = s.instance == inst
            if label not in STRUCTURE_CLASSES or mask.sum() < 20:
                continue
            normals = s.normals[mask]
            np.testing.assert_allclose(normals, np.broadcast_to(normals[0], normals.shape), atol=1e-5)
            offsets = points[mask] @ normals[0]
            assert offsets.std() < 1e-3 * max(1.0, abs(offsets.mean()))
    floor = [s.normals[s.semseg == FLOOR][0] for s in scenes if (s.semseg == FLOOR).any()]
    assert all(n[1] > 0.9 for n in floor)  # y up, camera pitched down by less than 25 degrees


def test_parts_exactly_on_people(scenes):
    with_people = 0
    for s in scenes:
        np.testing.assert_array_equal(s.parts > 0, s.semseg == PERSON)
        assert s.parts.max() <= 6
        names = np.unique(s.part_name[s.parts > 0])
        expected = np.array([HUMAN_PART_GROUPS[PART_NAMES[k]] for k in s.part_name[s.parts > 0]])
        np.testing.assert_array_equal(s.parts[s.parts > 0], expected)
        if s.instances_of(PERSON):
            with_people += 1
            assert len(names) >= 4
            np.testing.assert_array_equal(s.sal.astype(bool), s.semseg == PERSON)
    assert with_people >= 6


def test_salient_object_without_people():
    scene = generate_scene(3, 0, SIZE, num_persons=0)
    assert not scene.parts.any()
    if scene.sal.any():  # the nearest furniture instance: one instance, not floor or wall
        labels = np.unique(scene.instance[scene.sal.astype(bool)])
        assert len(labels) == 1 and scene.instance_class[int(labels[0])] not in (FLOOR, WALL)


def test_edges_where_instances_change(scenes):
    for s in scenes:
        inst = s.instance
        expected = np.zeros(inst.shape, dtype=bool)
        expected[:, :-1] |= inst[:, :-1] != inst[:, 1:]
        expected[:-1] |= inst[:-1] != inst[1:]
        np.testing.assert_array_equal(s.edge.astype(bool), expected)
        assert s.edge.any()
    labels = np.array([[1, 1, 2], [1, 1, 2], [3, 3, 3]])
    np.testing.assert_array_equal(instance_boundaries(labels), [[0, 1, 0], [1, 1, 1], [0, 0, 0]])


def test_num_persons_is_respected():
    two = generate_scene(0, 1, (96, 128), num_persons=2)
    assert len([i for i, c in two.instance_class.items() if c == PERSON]) == 2
    none = generate_scene(0, 1, (96, 128), num_persons=0)
    assert PERSON not in none.instance_class.values()
