"""Every notebook runs top to bottom (small settings), prints its results and draws its plots."""

from __future__ import annotations

import re
import time
from pathlib import Path

import matplotlib.pyplot as plt
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
# What each notebook must print: the results its text explains (a cell that silently computed nothing fails here).
PRINTS = {
    "01_autograd.ipynb": [r"dx = \[ ?6\. +12\.\]", r"dy = \[-4\. +-6\.\]"],
    "02_linear_regression.ipynb": [r"slope \d\.\d{3} +intercept \d\.\d{3}", r"training accuracy \d+\.\d%"],
    "03_mnist_lenet.ipynb": [r"held-out accuracy: [01]\.\d+", r"test accuracy \d+\.\d\d%"],
    "04_cifar_resnet_vgg.ipynb": [r"resnet18 [\d,]+ parameters", r"vgg16_bn [\d,]+ parameters"],
    "05_eager_vs_jit.ipynb": [r"primitives in the step: \d+"],
    "06_checkpoints_and_pytorch.ipynb": [r"resume \+ \d+ == \d+ epochs, bit for bit: True"],
}


def test_all_six_notebooks_exist():
    assert [p.name[:3] for p in NOTEBOOKS] == ["01_", "02_", "03_", "04_", "05_", "06_"]
    assert set(FIGURES) | set(PRINTS) <= {p.name for p in NOTEBOOKS}


def assert_is_a_drawn_figure(path: Path) -> None:
    """A PNG that decodes to a real picture: not empty, not one flat colour."""
    image = plt.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) >= 100, (path, image.shape)
    assert float(image[..., :3].std()) > 0.01, f"{path} is blank"


@pytest.mark.slow
@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch, shared_data_optional, compile_cache_env):
    """Runs top to bottom (nbclient raises on the first cell error); prints its results; draws its figures."""
    monkeypatch.setenv("JAXNETS_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    if not path.name.startswith("05_"):  # 05 measures what a first compile costs: no shared cache there
        for key, value in compile_cache_env.items():
            monkeypatch.setenv(key, value)
    if shared_data_optional is not None:
        monkeypatch.setenv("JAXNETS_CIFAR_DIR", str(shared_data_optional / "cifar10-subset"))
        monkeypatch.setenv("JAXNETS_DATA_STRICT", "0")  # the subset is the official layout trimmed on purpose
    notebook = nbformat.read(path, as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), "strip outputs in git"
    start = time.perf_counter()
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    seconds = time.perf_counter() - start
    printed = "".join(o.get("text", "") for c in notebook.cells for o in c.get("outputs", [])
                      if o.get("output_type") == "stream" and o.get("name") == "stdout")
    for pattern in PRINTS.get(path.name, []):
        assert re.search(pattern, printed), f"{path.name} did not print {pattern!r}:\n{printed[-2000:]}"
    for figure in FIGURES.get(path.name, []):
        assert_is_a_drawn_figure(tmp_path / figure)
    print(f"{path.name}: {seconds:.1f}s")
