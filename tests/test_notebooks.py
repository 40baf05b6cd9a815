"""Every notebook runs top to bottom (small settings), with no cell error, and writes its plots."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
# Figures each notebook must write (the training ones especially).
FIGURES = {
    "02_linear_regression.ipynb": ["02_linear_regression.png", "02_curve_fit.png", "02_classifier.png"],
    "03_mnist_lenet.ipynb": ["runs/03-lenet/curves.png", "03_confusion.png", "03_misclassified.png"],
    "04_cifar_resnet_vgg.ipynb": ["04_augment.png", "04_resnet18_curves.png", "04_vgg16_bn_curves.png"],
    "05_eager_vs_jit.ipynb": ["05_three_views.png", "05_speed.png", "05_compile_vs_step.png"],
    "06_checkpoints_and_pytorch.ipynb": ["06_resume.png"],
}


def test_all_six_notebooks_exist():
    assert [p.name[:3] for p in NOTEBOOKS] == ["01_", "02_", "03_", "04_", "05_", "06_"]


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch, shared_data_optional):
    monkeypatch.setenv("JAXNETS_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    if shared_data_optional is not None:
        monkeypatch.setenv("JAXNETS_CIFAR_DIR", str(shared_data_optional / "cifar10-subset"))
    notebook = nbformat.read(path, as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), "strip outputs in git"
    start = time.perf_counter()
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    seconds = time.perf_counter() - start
    errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    for figure in FIGURES.get(path.name, []):
        assert (tmp_path / figure).stat().st_size > 5_000, figure
    print(f"{path.name}: {seconds:.1f}s")
