"""MultiTaskDataModule and build_dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tiger.data import DatasetLayoutError, MultiTaskDataModule, NYUDv2, build_dataset
from tiger.data.synthetic import SyntheticScenes
from tiger.data.transforms import TrainTransform
from tiger.options import OptionError

SYNTHETIC = {"num_train": 6, "num_val": 3, "seed": 2, "size": [32, 40]}


def test_synthetic_datamodule_batches():
    tasks = ["semseg", "depth", "normals", "edge", "sal", "human_parts"]
    dm = MultiTaskDataModule(
        "synthetic", None, tasks, (32, 40), batch_size=4, num_workers=0, synthetic=SYNTHETIC
    )
    dm.setup("fit")
    assert dm.num_semseg_classes == 8 and dm.task_names == tuple(tasks)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 40) and batch["semseg"].shape == (4, 32, 40)
    assert batch["depth"].shape == (4, 1, 32, 40) and batch["normals"].shape == (4, 3, 32, 40)
    assert batch["meta"]["valid_box"].shape == (4, 4) and len(batch["meta"]["id"]) == 4
    assert len(dm.train_dataloader()) == 1  # drop_last
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape[0] == 3 and val["meta"]["id"][0] == "scene_2_1000000"
    train_ids = set(dm.datasets["train"].ids)
    assert not train_ids & set(dm.datasets["val"].ids)
    first = SyntheticScenes(1, (32, 40), seed=2, first_index=1_000_000).load_raw(0)
    np.testing.assert_allclose(val["depth"][0, 0].numpy(), first["depth"])  # eval: no augmentation
    with pytest.raises(ValueError, match="num_train, num_val"):
        MultiTaskDataModule("synthetic", None, tasks, (32, 40), synthetic={"num_train": 4})


def test_real_root_from_argument_or_environment(nyud_atrc, monkeypatch):
    dm = MultiTaskDataModule(
        "nyud", str(nyud_atrc.root), ["semseg", "depth"], (48, 64), batch_size=2, num_workers=0
    )
    dm.setup("fit")
    assert dm.num_semseg_classes == 40 and len(dm.datasets["train"]) == 4 and len(dm.datasets["val"]) == 2
    batch = next(iter(dm.val_dataloader()))
    assert batch["semseg"].shape == (2, 48, 64) and batch["meta"]["id"] == ["0005", "0006"]
    monkeypatch.setenv("MY_DATA", str(nyud_atrc.root.parent))
    dm = MultiTaskDataModule("nyud", None, ["depth"], (48, 64), root_env="MY_DATA")
    assert dm.root == nyud_atrc.root
    sibling = MultiTaskDataModule("nyud", str(nyud_atrc.root.parent / "NYUDv2"), ["depth"], (48, 64))
    assert sibling.root == nyud_atrc.root  # the other packaging's folder name
    dm.setup("test")
    assert isinstance(dm.datasets["test"], NYUDv2) and dm.datasets["test"].split == "val"


def test_missing_data_fails_at_once_with_the_layout(tmp_path, monkeypatch):
    monkeypatch.delenv("TIGER_DATA", raising=False)
    with pytest.raises(
        DatasetLayoutError, match=r"(?s)set \$TIGER_DATA .*PASCAL_MT.*sal_distill.*brdav/atrc"
    ):
        MultiTaskDataModule("pascal", None, ["sal"], (64, 64))
    monkeypatch.setenv("TIGER_DATA", str(tmp_path))
    dm = MultiTaskDataModule("nyud", None, ["depth"], (64, 64))
    with pytest.raises(DatasetLayoutError, match=r"(?s)NYUD_MT root .*NYUD_MT does not exist.*gt_sets"):
        dm.setup("fit")
    with pytest.raises(
        ValueError, match="unknown dataset 'cityscapes'; known datasets: nyud, pascal, synthetic"
    ):
        MultiTaskDataModule("cityscapes", None, ["depth"], (64, 64))


def test_build_dataset(nyud_invpt, monkeypatch):
    dataset = build_dataset("nyud", nyud_invpt.root, "val", ["edge"])
    assert isinstance(dataset, NYUDv2) and len(dataset) == 2
    monkeypatch.setenv("TIGER_DATA", str(nyud_invpt.root.parent))
    assert build_dataset("nyud", None, "val", ["edge"]).root == nyud_invpt.root  # $TIGER_DATA/NYUDv2
    assert len(build_dataset("synthetic", None, "val", ["sal"])) == 64
    synthetic = build_dataset("synthetic", None, "val", ["sal"], num_samples=2, size=(16, 20), seed=0)
    assert synthetic.ids[0] == "scene_0_1000000"
    with pytest.raises(ValueError, match="known datasets: nyud, pascal, synthetic"):
        build_dataset("kitti", None, "train", ["depth"])
    with pytest.raises(TypeError, match="only apply to the synthetic"):
        build_dataset("nyud", nyud_invpt.root, "val", ["edge"], num_samples=3)


class Repeated(torch.utils.data.Dataset):
    """The same raw scene at every index, through a TrainTransform."""

    def __init__(self, transform: TrainTransform) -> None:
        self.raw = SyntheticScenes(1, (24, 32), tasks=["depth"], seed=0).load_raw(0)
        self.transform = transform

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int):
        return self.transform(self.raw)["image"]


@pytest.mark.parametrize("seed", [None, 7])
def test_workers_draw_different_reproducible_augmentations(seed):
    dataset = Repeated(TrainTransform((24, 32), seed=seed))

    def epoch() -> list[torch.Tensor]:
        torch.manual_seed(123)
        return list(torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=2))

    first, second = epoch(), epoch()
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    # samples 0 and 1 are the first draws of workers 0 and 1: their generators differ
    assert len({tuple(b.flatten().tolist()) for b in first}) == 8


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"train_size": (32.5, 40)}, r"^train_size must be 2 integers \(H, W\) >= 1, got \[32.5, 40\]"),
        ({"eval_size": (0, 40)}, r"^eval_size must be 2 integers"),
        ({"batch_size": 0}, r"^batch_size must be >= 1, got 0$"),
        ({"batch_size": 2.5}, r"^batch_size must be an integer, got 2.5"),
        ({"eval_batch_size": -1}, r"^eval_batch_size must be >= 1, got -1$"),
        ({"num_workers": -1}, r"^num_workers must be >= 0, got -1$"),
        ({"synthetic": {**SYNTHETIC, "num_train": 0}}, r"^synthetic.num_train must be >= 1, got 0$"),
        ({"synthetic": {**SYNTHETIC, "size": [32, 40.5]}}, r"^synthetic.size must be 2 integers"),
    ],
)
def test_sizes_are_checked_never_truncated(changes, message):
    arguments = {"train_size": (32, 40), "num_workers": 0, "synthetic": SYNTHETIC, **changes}
    with pytest.raises(OptionError, match=message):
        MultiTaskDataModule("synthetic", None, ["depth"], **arguments)
    with pytest.raises(OptionError, match=r"^size must be 2 integers \(H, W\) >= 1, got \[24.5, 32\]"):
        TrainTransform((24.5, 32))
