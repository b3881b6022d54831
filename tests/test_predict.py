"""``python -m tiger.predict``: same numbers as the API, the saved-prediction format, failures, overwrites."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tiger.analysis.figures import colorize
from tiger.data.synthetic import write_nyud_tree
from tiger.evaluate import evaluate_folder
from tiger.inference import load_model
from tiger.predict import main, read_image


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An RGB 37x91 PNG, a greyscale 300x200 JPEG, a PNG full of garbage and a text file."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (37, 91, 3), dtype=np.uint8)).save(folder / "wide.png")
    Image.fromarray(rng.integers(0, 256, (300, 200), dtype=np.uint8), mode="L").save(folder / "tall.jpg")
    (folder / "broken.png").write_bytes(b"definitely not a PNG" * 20)
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def cli_run(tiny_checkpoint: Path, image_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    """One CLI run over the folder (routing figures included): its exit status, output folder, stderr."""
    out = tmp_path_factory.mktemp("predictions")
    stderr = io.StringIO()  # capsys is function-scoped; this fixture is shared by the module
    with contextlib.redirect_stderr(stderr):
        status = main([str(tiny_checkpoint), str(image_folder), "--out", str(out)])
    return status, out, stderr.getvalue()


def test_cli_keeps_going_past_an_unreadable_image(cli_run) -> None:
    status, out, stderr = cli_run
    assert status == 1
    assert "warning: skipped" in stderr and "broken.png" in stderr
    assert "wrote predictions for 2 of 3 images" in stderr and "1 failed" in stderr
    assert "skipped 1 files without an image extension" in stderr  # notes.txt, said so
    assert "converted 1 non-RGB images to RGB (L x1)" in stderr
    assert not list(out.rglob("broken*"))


def test_cli_writes_what_the_api_predicts(cli_run, tiny_checkpoint: Path, image_folder: Path) -> None:
    _, out, _ = cli_run
    predictor = load_model(tiny_checkpoint)
    names = ["wide", "tall"]
    images = [Image.open(image_folder / "wide.png"), Image.open(image_folder / "tall.jpg")]
    predictions = predictor.predict(images)
    for name, image, prediction in zip(names, images, predictions, strict=True):
        size = (image.height, image.width)
        for task in ("semseg", "human_parts"):
            saved = np.asarray(Image.open(out / task / f"{name}.png"))
            assert saved.dtype == np.uint8 and saved.shape == size
            np.testing.assert_array_equal(saved, prediction[task])
        for task in ("sal", "edge"):
            saved = np.asarray(Image.open(out / task / f"{name}.png"))
            assert saved.shape == size
            np.testing.assert_array_equal(saved, np.floor(prediction[task] * 255).astype(np.uint8))
            # within uint8 quantisation of the probabilities
            assert np.abs(saved / 255.0 - prediction[task]).max() < 1 / 255 + 1e-6
        depth = np.load(out / "depth" / f"{name}.npy")
        assert depth.dtype == np.float32 and depth.shape == size
        np.testing.assert_allclose(depth, prediction["depth"], rtol=1e-5)
        normals = np.load(out / "normals" / f"{name}.npy")
        assert normals.dtype == np.float32 and normals.shape == (*size, 3)
        np.testing.assert_allclose(normals, prediction["normals"], atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=1e-4)
        for task in predictor.task_names:
            picture = np.asarray(Image.open(out / "vis" / task / f"{name}.png"))
            classes = 8 if task == "semseg" else None
            np.testing.assert_array_equal(picture, colorize(task, prediction[task], classes))
        routing = np.asarray(Image.open(out / "routing" / f"{name}.png").convert("RGB"))
        packed = routing.astype(np.int64) @ np.array([65536, 256, 1])
        assert routing.std() > 10 and len(np.unique(packed)) > 2


def test_cli_never_overwrites_without_the_flag(
    cli_run, tiny_checkpoint: Path, image_folder: Path, capsys
) -> None:
    _, out, _ = cli_run
    depth = out / "depth" / "wide.npy"
    before = depth.stat().st_mtime_ns
    single = str(image_folder / "wide.png")
    status = main([str(tiny_checkpoint), single, "--out", str(out), "--tasks", "depth", "--no-routing"])
    assert status == 2
    message = capsys.readouterr().err
    assert "2 output files exist already" in message and str(depth) in message and "--overwrite" in message
    assert depth.stat().st_mtime_ns == before
    np.save(depth, np.zeros((2, 2), np.float32))
    status = main(
        [str(tiny_checkpoint), single, "--out", str(out), "--tasks", "depth", "--no-routing", "--overwrite"]
    )
    assert status == 0
    assert np.load(depth).shape == (37, 91) and np.load(depth).min() > 0


def test_cli_rejects_bad_usage(tiny_checkpoint: Path, image_folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    wide = str(image_folder / "wide.png")
    assert main([str(tiny_checkpoint), wide, "--out", str(out), "--tasks", "optical_flow"]) == 2
    assert "--tasks ['optical_flow'] are not predicted by this model" in capsys.readouterr().err
    assert main([str(tiny_checkpoint), str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    twin = tmp_path / "twin"
    twin.mkdir()
    Image.new("RGB", (8, 8)).save(twin / "wide.jpg")
    assert main([str(tiny_checkpoint), wide, str(twin), "--out", str(out)]) == 2
    assert "same file name" in capsys.readouterr().err
    assert main([str(tiny_checkpoint), wide, "--out", str(out), "--expert-weights", "sam"]) == 2
    assert "ROLE=PATH" in capsys.readouterr().err
    missing = tmp_path / "sam_vit_b_01ec64.pth"
    assert main([str(tiny_checkpoint), wide, "--out", str(out), "--expert-weights", f"sam={missing}"]) == 2
    message = capsys.readouterr().err
    assert str(missing) in message and "--expert-weights role=path" in message
    assert not out.exists()
    a_file = tmp_path / "a_file.png"
    a_file.write_bytes(b"")
    for target in (a_file, a_file / "sub"):  # checked before the checkpoint is even read
        assert main([str(tmp_path / "no.ckpt"), wide, "--out", str(target)]) == 2
        assert f"--out {target} must be a folder" in capsys.readouterr().err


def test_cli_on_a_foreign_checkpoint_exits_2(image_folder: Path, tmp_path: Path, offline_env) -> None:
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tiger.predict",
            str(foreign),
            str(image_folder),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        env=offline_env(),
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "error: not a TIGER checkpoint" in result.stderr and "foreign.ckpt" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_output_is_scored_by_evaluate(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The saved-prediction folder is what ``python -m tiger.evaluate`` reads (here on a NYUD-format tree)."""
    tree = write_nyud_tree(tmp_path / "NYUD_MT", num_train=1, num_val=2, size=(48, 64))
    images = [next((tree.root / "images").glob(f"{image_id}.*")) for image_id in tree.splits["val"]]
    out = tmp_path / "predictions"
    tasks = ["semseg", "depth", "normals", "edge"]
    arguments = [
        str(tiny_checkpoint),
        *map(str, images),
        "--out",
        str(out),
        "--tasks",
        *tasks,
        "--no-routing",
    ]
    assert main(arguments) == 0
    results = evaluate_folder(out, "nyud", str(tree.root), "val", tasks)
    assert set(results) == set(tasks)
    assert 0.0 <= results["semseg"]["mIoU"] <= 100.0 and results["depth"]["rmse"] > 0
    assert all(np.isfinite(value) for metrics in results.values() for value in metrics.values())


def test_a_16_bit_grey_png_is_scaled_not_white(tmp_path):
    values = np.array([[0, 25700], [51400, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "grey16.png")
    image, mode = read_image(tmp_path / "grey16.png")
    assert mode == "I;16"
    np.testing.assert_array_equal(
        image, np.repeat(np.array([[0, 100], [200, 255]], np.uint8)[..., None], 3, -1)
    )


def test_outputs_of_an_earlier_run_left_in_the_folder_are_listed(
    tiny_checkpoint: Path, image_folder: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    wide, tall = str(image_folder / "wide.png"), str(image_folder / "tall.jpg")
    assert main([str(tiny_checkpoint), wide, tall, "--out", str(out), "--no-routing"]) == 0
    assert "warning" not in capsys.readouterr().err  # a fresh folder: nothing to say
    # another model (here: fewer tasks) over the same folder: the earlier files stay, and are listed
    assert main([str(tiny_checkpoint), wide, "--out", str(out), "--tasks", "depth", "--overwrite"]) == 0
    message = capsys.readouterr().err
    assert f"warning: {out} also holds 22 files that this run did not write" in message
    assert "depth/ (1), edge/ (2), human_parts/ (2), normals/ (2), sal/ (2)" in message  # tall's depth, ...
    assert "and 7 more folders" in message and "python -m tiger.evaluate" in message
    assert (out / "semseg" / "wide.png").is_file()  # nothing is deleted
