"""Miniature dataset trees written by the synthetic generator (session-wide, read-only use)."""

from __future__ import annotations

import numpy as np
import pytest

from tiger.data.synthetic import MiniatureTree, write_nyud_tree, write_pascal_tree

SIZE = (48, 64)


@pytest.fixture(scope="session")
def nyud_atrc(tmp_path_factory) -> MiniatureTree:
    return write_nyud_tree(tmp_path_factory.mktemp("nyud") / "NYUD_MT", 4, 2, SIZE, seed=3, packaging="atrc")


@pytest.fixture(scope="session")
def nyud_invpt(tmp_path_factory) -> MiniatureTree:
    return write_nyud_tree(tmp_path_factory.mktemp("nyud") / "NYUDv2", 4, 2, SIZE, seed=3, packaging="invpt")


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch):
    """The user cache (``$XDG_CACHE_HOME``, where the PASCAL parts cache goes) in the test's folder."""
    cache = tmp_path / "user-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache / "tiger"


@pytest.fixture
def pascal_tree(tmp_path) -> MiniatureTree:
    """A fresh tree per test (tests change its files)."""
    return write_pascal_tree(tmp_path / "PASCAL_MT", 6, 3, SIZE, seed=5)


def _seg2bmap_by_definition(labels: np.ndarray) -> np.ndarray:
    """SEISM's seg2bmap pixel by pixel: differs from the east, south or south-east neighbour; the last
    row compares east only, the last column south only, the corner nothing."""
    height, width = labels.shape
    out = np.zeros((height, width), dtype=bool)
    for y in range(height):
        for x in range(width):
            if y + 1 < height and x + 1 < width:
                neighbours = [(y, x + 1), (y + 1, x), (y + 1, x + 1)]
            elif x + 1 < width:
                neighbours = [(y, x + 1)]
            elif y + 1 < height:
                neighbours = [(y + 1, x)]
            else:
                neighbours = []
            out[y, x] = any(labels[n] != labels[y, x] for n in neighbours)
    return out


@pytest.fixture(scope="session")
def seg2bmap_by_definition():
    """An independent seg2bmap (pixel loops) to check the boundary metric's ground truth against."""
    return _seg2bmap_by_definition
