"""jaxnets.report: strict JSON, markdown tables and PNG plots, each written atomically (no JAX work here)."""

from __future__ import annotations

import json
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest

from jaxnets import report

PNG = b"\x89PNG\r\n\x1a\n"


def strict_load(path):
    return json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"non-strict JSON constant {name}"))


def test_write_json_round_trips_with_non_finite_floats_as_null(tmp_path):
    path = tmp_path / "out.json"
    value = {"loss": [1.5, math.nan, -math.inf], "nested": {"acc": math.inf, "name": "lenet", "n": 3}, "t": (1, 2)}
    report.write_json(path, value)
    assert strict_load(path) == {"loss": [1.5, None, None], "nested": {"acc": None, "name": "lenet", "n": 3},
                                 "t": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_write_json_that_cannot_encode_leaves_the_old_file(tmp_path):
    path = tmp_path / "out.json"
    report.write_json(path, {"epoch": 1})
    with pytest.raises(TypeError):
        report.write_json(path, {"epoch": 2, "where": tmp_path})
    assert strict_load(path) == {"epoch": 1}
    report.write_json(path, {"where": tmp_path}, default=str)
    assert strict_load(path) == {"where": str(tmp_path)}


def test_markdown_table():
    text = report.markdown_table(["model", "img/s"], [["mlp", "1,234"], ["lenet", 56]], "lr")
    assert text == "| model | img/s |\n| --- | ---: |\n| mlp | 1,234 |\n| lenet | 56 |"
    with pytest.raises(ValueError, match="2 cells"):
        report.markdown_table(["a", "b"], [["only one"]])


def capture_figures(monkeypatch) -> list:
    """Make `report.save_figure` keep the figure it is given (and still write the file)."""
    figures, save = [], report.save_figure

    def keep(fig, path, dpi=100):
        figures.append((fig.axes, [ax.get_legend_handles_labels()[1] for ax in fig.axes]))
        return save(fig, path, dpi)

    monkeypatch.setattr(report, "save_figure", keep)
    return figures


def test_plot_history_draws_what_the_history_has(tmp_path, monkeypatch):
    figures = capture_figures(monkeypatch)
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "train_acc": 0.5, "val_acc": 0.4,
                "test_acc": None, "lr": 0.1 / e} for e in (1, 2, 3)]
    path = report.plot_history(history, tmp_path / "curves.png", "mlp on digits")
    assert path == tmp_path / "curves.png" and path.read_bytes()[:8] == PNG
    report.plot_history([{k: v for k, v in h.items() if k != "lr"} for h in history], tmp_path / "no-lr.png")
    (axes, labels), (axes_no_lr, _) = figures
    assert len(axes) == 3 and len(axes_no_lr) == 2  # the learning-rate panel only when the history has one
    assert labels[0] == ["train", "held-out"] and labels[1] == ["train", "held-out"]  # no test accuracy recorded
    loss_lines, lr_lines = axes[0].get_lines(), axes[2].get_lines()
    assert list(loss_lines[0].get_xdata()) == [1, 2, 3]  # the points are the history's own values
    assert list(loss_lines[1].get_ydata()) == [h["val_loss"] for h in history]
    assert list(lr_lines[0].get_ydata()) == [h["lr"] for h in history]
    assert not list(tmp_path.glob("*.tmp")) and plt.get_fignums() == []


def test_a_failed_plot_keeps_the_old_png_and_closes_the_figure(tmp_path, monkeypatch):
    path = tmp_path / "curves.png"
    history = [{"epoch": 1, "train_loss": 1.0}]
    report.plot_history(history, path)
    before = path.read_bytes()

    def half_written(self, fname, **kwargs):
        with open(fname, "wb") as f:
            f.write(PNG + bytes(100))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", half_written)
    with pytest.raises(OSError, match="No space"):
        report.plot_history(history, path)
    assert path.read_bytes() == before and plt.get_fignums() == []


ROWS = [
    {"model": "mlp", "mode": "eager", "what": "train", "batch_size": 8, "compile_s": 2.0, "step_s_median": 0.01,
     "step_s_min": 0.009, "step_s_max": 0.02, "images_per_s": 800.0, "gflops_per_s": 1.5, "pct_of_peak": 3.0,
     "cpu_util": 1.0, "compilations": 70},
    {"model": "mlp", "mode": "jit", "what": "train", "batch_size": 8, "compile_s": 0.5, "step_s_median": 0.001,
     "step_s_min": 0.001, "step_s_max": 0.002, "images_per_s": 8000.0, "cpu_util": 0.5, "compilations": 1},
    {"model": "mlp", "mode": "torch-eager", "what": "train", "batch_size": 8, "skipped": "torch is not installed"},
]


def test_speed_table_and_lines():
    lines = report.speed_table(ROWS).splitlines()
    assert len(lines) == 2 + len(ROWS)
    assert {line.count("|") for line in lines} == {len(report.SPEED_HEADER) + 1}  # every row has every column
    assert lines[2] == "| mlp | train | 8 | eager | 2.00 | 10.00 [9.00-20.00] | 800 | 1.5 | 3.0 | 100% | 70 |"
    assert lines[3].endswith("| 8,000 | - | - | 50% | 1 |")  # FLOPs unknown: a dash, not 0.0 (nor a crash)
    assert "| skipped: torch is not installed |" in lines[4]
    assert "skipped: torch is not installed" in report.speed_line(ROWS[2])
    assert "800 img/s" in report.speed_line(ROWS[0])
    ratio = {"model": "mlp", "what": "train", "batch_size": 8, "jit_over_eager": 10.0, "jit_over_xla_default": None,
             "jit_over_best_torch": 0.5}
    assert report.ratio_line(ratio) == "mlp train b8:  jit/eager 10.0x  jaxnets-jit/best-torch 0.50x"


def test_speed_chart_one_bar_per_measured_case(tmp_path, monkeypatch):
    figures = capture_figures(monkeypatch)
    path = report.speed_chart(ROWS, tmp_path / "bench.png")
    assert path.read_bytes()[:8] == PNG and not list(tmp_path.glob("*.tmp"))
    ((ax,), labels), = figures
    assert labels == [["eager", "jit"]]  # the skipped case draws nothing
    assert sorted(bar.get_height() for bar in ax.patches) == [800.0, 8000.0]
