"""jaxnets.bench: schema and sanity of the report (no speed assertions: machines are noisy)."""

from __future__ import annotations

import json

import pytest

from jaxnets import bench
from jaxnets.cli import bench as cli

ROW_KEYS = {"model", "mode", "what", "batch_size", "dtype", "compile_s", "first_step_s", "step_s_median", "step_s_min",
            "step_s_max", "steps_timed", "images_per_s", "flops_per_step", "gflops_per_s", "pct_of_peak", "cpu_util",
            "peak_memory_bytes", "compilations"}


def test_cli_runs_mlp_in_every_available_mode(tmp_path, capsys):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    modes = "eager,jit" + (",torch-eager,torch-compile" if bench.torch_available() else "")
    code = cli.main(["--models", "mlp", "--modes", modes, "--batch-size", "16", "--steps", "5", "--numerics",
                     "--vary-batch", "--json", str(out_json), "--plot", str(out_png)])
    assert code == 0
    report = json.loads(out_json.read_text())
    assert report["machine"]["cores"] >= 1 and report["peak_gflops"] > 0
    assert [r["mode"] for r in report["rows"]] == modes.split(",")
    for row in report["rows"]:
        assert "skipped" not in row, row
        assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
        assert row["step_s_min"] <= row["step_s_median"] <= row["step_s_max"]
        for key in ("compile_s", "step_s_median", "images_per_s", "flops_per_step", "gflops_per_s", "cpu_util"):
            assert row[key] > 0, (row["mode"], key)
    jit = next(r for r in report["rows"] if r["mode"] == "jit")
    assert jit["compilations"] == 1
    # the same model FLOPs from XLA's cost analysis and from PyTorch's counter, within 10%
    if bench.torch_available():
        torch_row = next(r for r in report["rows"] if r["mode"] == "torch-eager")
        assert abs(torch_row["flops_per_step"] / jit["flops_per_step"] - 1) < 0.1
    ratio = report["ratios"][0]
    assert ratio["jit_over_eager"] > 0
    numerics = report["numerics"][0]
    assert numerics["loss_abs_diff"] < 1e-5 and numerics["params_max_abs_diff"] < 1e-4
    vary = report["vary_batch"]
    assert all(r["compilations"] == 0 for r in vary if not r["new_shape"])  # a seen shape never recompiles
    assert all(r["compilations"] == 1 for r in vary if r["mode"] == "jit" and r["new_shape"])
    assert out_png.stat().st_size > 5_000
    assert "jit/eager" in capsys.readouterr().out


def test_infer_mode_and_skips(monkeypatch):
    rows = bench.run(["mlp"], ["jit"], batch_size=8, steps=5, what="infer", log=None)
    assert rows[0]["what"] == "infer" and rows[0]["images_per_s"] > 0
    monkeypatch.setattr(bench, "torch_available", lambda: False)
    rows = bench.run(["mlp"], ["torch-eager"], batch_size=8, steps=5, log=None)
    assert "torch is not installed" in rows[0]["skipped"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown mode"):
        bench.run(["mlp"], ["graph"], log=None)
    with pytest.raises(ValueError, match="unknown model"):
        bench.run(["resnet9"], ["jit"], log=None)
    assert cli.main(["--models", "resnet9"]) == 2
