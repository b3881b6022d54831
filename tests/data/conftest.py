"""Miniature dataset trees written by the synthetic generator (session-wide, read-only use)."""

from __future__ import annotations

import pytest

from tiger.data.synthetic import MiniatureTree, write_nyud_tree, write_pascal_tree

SIZE = (48, 64)


@pytest.fixture(scope="session")
def nyud_atrc(tmp_path_factory) -> MiniatureTree:
    return write_nyud_tree(tmp_path_factory.mktemp("nyud") / "NYUD_MT", 4, 2, SIZE, seed=3, packaging="atrc")


@pytest.fixture(scope="session")
def nyud_invpt(tmp_path_factory) -> MiniatureTree:
    return write_nyud_tree(tmp_path_factory.mktemp("nyud") / "NYUDv2", 4, 2, SIZE, seed=3, packaging="invpt")


@pytest.fixture
def pascal_tree(tmp_path) -> MiniatureTree:
    """A fresh tree per test: the reader writes its ImageSets/Parts cache into it."""
    return write_pascal_tree(tmp_path / "PASCAL_MT", 6, 3, SIZE, seed=5)
