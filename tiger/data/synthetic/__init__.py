"""Synthetic data, apart from the real readers: procedural ray-cast scenes, the embedded default's data set,
and miniature NYUD_MT / PASCAL_MT trees in the real file formats (for tests and demos)."""

from tiger.data.synthetic.dataset import SYNTHETIC_SPLIT_OFFSETS, SyntheticScenes
from tiger.data.synthetic.scenes import SCENE_CLASSES, Scene, generate_scene
from tiger.data.synthetic.trees import MiniatureTree, write_nyud_tree, write_pascal_tree

__all__ = [
    "SCENE_CLASSES",
    "SYNTHETIC_SPLIT_OFFSETS",
    "MiniatureTree",
    "Scene",
    "SyntheticScenes",
    "generate_scene",
    "write_nyud_tree",
    "write_pascal_tree",
]
