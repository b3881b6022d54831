"""python -m tiger.data.verify on miniature NYUD_MT / PASCAL_MT trees, clean and with injected faults."""

from __future__ import annotations

import io
import shutil

import numpy as np
import scipy.io
from PIL import Image

from tiger.data.verify import main, verify


def problem_lines(output: str) -> list[str]:
    kinds = ("missing:", "unreadable:", "wrong size:", "bad values:")
    return [line for line in output.splitlines() if line.startswith(kinds)]


def truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_clean_tree_passes_with_its_counts(nyud_atrc, capsys):
    assert main(["--dataset", "nyud", "--root", str(nyud_atrc.root), "--no-progress", "--workers", "1"]) == 0
    output = capsys.readouterr().out
    assert problem_lines(output) == []
    assert "train: 4 images (the benchmark has 795), 20 files read, sizes 48x64: 4; 0 problem(s)" in output
    assert "val: 2 images (the benchmark has 654), 10 files read, sizes 48x64: 2; 0 problem(s)" in output
    assert output.rstrip().endswith("no problems found")


def test_every_fault_is_one_line_and_the_exit_code_says_so(nyud_invpt, tmp_path, capsys):
    root = shutil.copytree(nyud_invpt.root, tmp_path / "NYUDv2")
    truncate(root / "segmentation" / "0001.png")  # train
    Image.fromarray(np.zeros((40, 64), np.uint8)).save(root / "edge" / "0001.png")  # the same image: 2 lines
    (root / "depth" / "0002.npy").unlink()  # train
    Image.fromarray(np.full((48, 64), 41, np.uint8)).save(root / "segmentation" / "0003.png")  # train
    Image.fromarray(np.zeros((48, 60, 3), np.uint8)).save(root / "normals" / "0005.png")  # val
    depth = np.load(root / "depth" / "0006.npy")
    depth[:2, :3] = -1.0  # negative depth: invalid pixels, a note, not a problem
    np.save(root / "depth" / "0006.npy", depth)
    assert main(["--dataset", "nyud", "--root", str(root), "--no-progress", "--workers", "1"]) == 1
    output = capsys.readouterr().out
    lines = problem_lines(output)
    assert len(lines) == 5, output
    assert any(
        line.startswith("unreadable: cannot read") and "segmentation/0001.png" in line for line in lines
    )
    assert any(line.startswith("wrong size: edge label") and "edge/0001.png" in line for line in lines)
    assert any(line.startswith("missing:") and "depth/0002.npy" in line for line in lines)
    assert any(
        line.startswith("bad values:") and "0003.png: semseg values up to 41" in line for line in lines
    )
    assert any(line.startswith("wrong size:") and "normals/0005.png" in line for line in lines)
    assert "note: " in output and "0006.npy: 6 negative depth values" in output
    assert "train: 4 images (the benchmark has 795)" in output and "4 problem(s), 0 note(s)" in output
    assert "val: 2 images" in output and "1 problem(s), 1 note(s)" in output
    assert output.rstrip().endswith("5 problem(s) found")
    # two worker processes find the same problems
    log = io.StringIO()
    reports = verify("nyud", root, workers=2, out=log, progress=False)
    assert [r.problems for r in reports] == [4, 1] and sorted(problem_lines(log.getvalue())) == sorted(lines)


def test_missing_split_file_and_folder(nyud_atrc, tmp_path, capsys):
    root = shutil.copytree(nyud_atrc.root, tmp_path / "NYUD_MT")
    shutil.rmtree(root / "edge")
    assert (
        main(
            [
                "--dataset",
                "nyud",
                "--root",
                str(root),
                "--splits",
                "train",
                "test",
                "--no-progress",
                "--workers",
                "1",
            ]
        )
        == 1
    )
    lines = problem_lines(capsys.readouterr().out)
    assert len(lines) == 2
    assert lines[0].startswith("missing: folder") and "edge (the edge files of 4 images)" in lines[0]
    assert lines[1].startswith("missing: split file") and "test.txt" in lines[1]
    # only the tasks asked for are checked
    assert (
        main(
            ["--dataset", "nyud", "--root", str(root), "--tasks", "semseg", "--no-progress", "--workers", "1"]
        )
        == 0
    )
    assert (
        main(["--dataset", "nyud", "--root", str(tmp_path / "nowhere"), "--no-progress", "--workers", "1"])
        == 2
    )
    assert "does not exist" in capsys.readouterr().err


def test_pascal_faults_and_nothing_is_written(pascal_tree, user_cache, capsys):
    root = pascal_tree.root
    train, val = pascal_tree.splits["train"], pascal_tree.splits["val"]
    truncate(root / "JPEGImages" / f"{train[0]}.jpg")
    (root / "sal_distill" / f"{train[1]}.png").unlink()
    scipy.io.savemat(
        root / "pascal-context" / "trainval" / f"{val[0]}.mat", {"LabelMap": np.full((48, 64), 500)}
    )
    (root / "human_parts" / f"{val[1]}.mat").write_text("garbage")
    before = sorted(p for p in root.rglob("*"))
    assert main(["--dataset", "pascal", "--root", str(root), "--no-progress", "--workers", "1"]) == 1
    output = capsys.readouterr().out
    lines = problem_lines(output)
    assert len(lines) == 4, output
    assert any(line.startswith("unreadable:") and f"JPEGImages/{train[0]}.jpg" in line for line in lines)
    assert any(line.startswith("missing:") and f"sal_distill/{train[1]}.png" in line for line in lines)
    assert any(
        line.startswith("bad values:") and "LabelMap values 500..500 outside 0..459" in line for line in lines
    )
    assert any(line.startswith("unreadable:") and f"human_parts/{val[1]}.mat" in line for line in lines)
    assert (
        "train: 6 images (the benchmark has 4998)" in output
        and "val: 3 images (the benchmark has 5105)" in output
    )
    assert sorted(p for p in root.rglob("*")) == before and not user_cache.exists()
