"""Every notebook runs top to bottom on a freshly trained checkpoint and draws figures that are not blank;
the notebooks are stored without outputs."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import numpy as np
import pytest
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from PIL import Image

from tiger.study.report import summary

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
FIGURES = {
    "01_quick_inference": ["prediction_0.png", "prediction_1.png"],
    "02_routing_weights": ["routing_maps.png", "expert_usage.png", "routing_agreement.png"],
    "03_task_instructions": ["task_similarity.png", "task_similarity_weights.png"],
    "04_known_answer_study": [
        "baseline_curves.png",
        "routing_mass.png",
        "faithfulness.png",
        "routing_over_steps.png",
        "routing_maps.png",
    ],
}


def test_every_notebook_is_listed_and_stored_without_outputs() -> None:
    assert sorted(path.stem for path in NOTEBOOKS.glob("*.ipynb")) == sorted(FIGURES)
    for path in NOTEBOOKS.glob("*.ipynb"):
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        assert notebook.metadata.kernelspec.name == "python3", path.name
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: clear the outputs"


@pytest.fixture(scope="module")
def kernel(
    tiny_checkpoint: Path, study_multirun: Path, tmp_path_factory: pytest.TempPathFactory, offline_env
):
    """One python3 kernel for all notebooks (each starts from a cleared namespace, see below), with
    ``TIGER_CHECKPOINT`` set to the tiny checkpoint, ``TIGER_STUDY`` to the gathered small study and
    ``TIGER_NOTEBOOK_OUT`` to a temporary folder."""
    workdir = tmp_path_factory.mktemp("notebooks")
    study = workdir / "study.json"
    study.write_text(json.dumps(summary([study_multirun])))
    env = offline_env()
    env.update(
        TIGER_CHECKPOINT=str(tiny_checkpoint),
        TIGER_STUDY=str(study),
        TIGER_NOTEBOOK_OUT=str(workdir / "figures"),
    )
    manager = KernelManager(kernel_name="python3")
    manager.start_kernel(cwd=str(workdir), env=env)
    try:
        yield manager, workdir / "figures"
    finally:
        manager.shutdown_kernel(now=True)


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_notebook_runs_and_draws(name: str, kernel) -> None:
    manager, figures = kernel
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    # a shared kernel saves importing torch and the experts three times; `%reset -f` empties the
    # namespace first, so a notebook that uses a name it does not define itself still fails
    notebook.cells.insert(0, nbformat.v4.new_code_cell('get_ipython().run_line_magic("reset", "-f")'))
    NotebookClient(notebook, km=manager, timeout=300).execute()  # raises CellExecutionError on failure
    for figure in FIGURES[name]:
        path = figures / name / figure
        assert path.is_file(), f"{name} did not write {path}"
        pixels = np.asarray(Image.open(path).convert("RGB")).astype(np.int64)
        colours = np.unique(pixels @ np.array([65536, 256, 1]))
        assert pixels.std() > 10 and len(colours) > 2, f"{path} looks blank"
