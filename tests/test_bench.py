"""jaxnets.bench: the report's schema and arithmetic, every mode, and adding a mode as one entry.

No speed assertions (machines are noisy): the checks are on what the numbers
must satisfy whatever the machine (derived fields equal their definitions,
compilations counted, FLOPs agreeing between frameworks).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnets import bench, report
from jaxnets.bench import cases, host, suite, timing
from jaxnets.cli import bench as cli

ROW_KEYS = {"model", "mode", "what", "batch_size", "dtype", "compile_s", "first_step_s", "trace_s", "step_s_median",
            "step_s_min", "step_s_max", "steps_timed", "images_per_s", "flops_per_step", "gflops_per_s",
            "pct_of_peak", "cpu_util", "peak_memory_bytes", "compilations"}
BATCH, STEPS = 8, 5  # 5 timed steps: one per segment
PEAK_GFLOPS = host.peak_gflops


@pytest.fixture(autouse=True)
def quick_compiles(monkeypatch):
    """XLA without its expensive passes (here and in jit-xla's child), and a small peak matmul: these tests check
    the report's bookkeeping, not speed."""
    monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
    previous = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    small_peak = functools.cache(lambda: PEAK_GFLOPS(256, repeats=2))
    monkeypatch.setattr(host, "peak_gflops", small_peak)  # what `run` calls
    monkeypatch.setattr(bench, "peak_gflops", small_peak)  # what the CLI calls
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture
def jax_modes_here(monkeypatch):
    """`eager` and `jit` measured in this process (no child per case): for the tests of the report's bookkeeping.
    The CLI test over every mode and the wheel test keep the real child processes."""
    for name, compiled in (("eager", False), ("jit", True)):
        here = cases.Mode(name, "jax", functools.partial(cases.jax_case, compiled=compiled), "in this process")
        monkeypatch.setitem(cases.MODE_TABLE, name, here)


@pytest.mark.slow  # every mode, PyTorch's compile included (~25 s)
def test_cli_runs_mlp_in_every_mode_and_its_report_adds_up(tmp_path, capsys, monkeypatch):
    """One CLI run over every mode (torch ones where installed): schema, derived fields, compile counts, ratios."""
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    # eager last: its per-op kernels then stay cached for --numerics and --vary-batch (every JAX case clears caches)
    modes = [m for m in bench.MODES if m != "eager" and (m not in bench.TORCH_MODES or bench.torch_available())]
    modes.append("eager")
    # --vary-batch's own batch sizes cost an eager compile per new shape: three small ones show the same thing.
    monkeypatch.setattr(bench, "vary_batch", functools.partial(suite.vary_batch, batch_sizes=(8, 16, 8)))
    code = cli.main(["--models", "mlp", "--modes", ",".join(modes), "--batch-size", str(BATCH), "--steps", str(STEPS),
                     "--numerics", "--vary-batch", "--json", str(out_json), "--plot", str(out_png)])
    assert code == 0
    report = json.loads(out_json.read_text())
    assert report["complete"] is True and "rows_measured" not in report
    assert report["machine"]["cpu"] == host.cpu_model() and report["machine"]["cores"] == os.cpu_count()
    assert report["peak_gflops"] == bench.peak_gflops() > 0
    rows = {r["mode"]: r for r in report["rows"]}
    assert [r["mode"] for r in report["rows"]] == modes
    for mode, row in rows.items():
        assert "skipped" not in row, row
        assert set(row) == ROW_KEYS, set(row) ^ ROW_KEYS  # the JSON schema BENCHMARKS.md's tables are read from
        assert row["step_s_min"] <= row["step_s_median"] <= row["step_s_max"]
        assert row["steps_timed"] == STEPS
        assert row["images_per_s"] == pytest.approx(BATCH / row["step_s_median"])
        assert row["gflops_per_s"] == pytest.approx(row["flops_per_step"] / row["step_s_median"] / 1e9)
        assert row["pct_of_peak"] == pytest.approx(100 * row["gflops_per_s"] / report["peak_gflops"])
        assert row["compile_s"] > 0 and row["cpu_util"] > 0, mode

    # jit compiles the whole step exactly once; eager compiles many small per-op kernels and traces nothing whole.
    assert rows["jit"]["compilations"] == rows["jit-xla"]["compilations"] == 1
    assert rows["eager"]["compilations"] > 1 and rows["eager"]["trace_s"] is None and rows["jit"]["trace_s"] > 0
    # the same step, so the same FLOPs: XLA's count of the one HLO for every JAX mode; PyTorch's counter gives the
    # matmuls' 2 x batch x (forward + weight gradients + input gradients but the data's), XLA adds elementwise work.
    assert rows["eager"]["flops_per_step"] == rows["jit"]["flops_per_step"] == rows["jit-xla"]["flops_per_step"]
    mlp = cases.BENCH_KWARGS["mlp"]
    widths = [28 * 28] + [mlp["hidden_size"]] * mlp["num_layers"] + [10]
    weights = [a * b for a, b in zip(widths, widths[1:], strict=False)]
    matmul_flops = 2 * BATCH * (2 * sum(weights) + sum(weights[1:]))
    assert matmul_flops < rows["jit"]["flops_per_step"] < 1.25 * matmul_flops
    for mode in bench.TORCH_MODES:
        if mode in rows:
            assert rows[mode]["compilations"] is None and rows[mode]["flops_per_step"] == matmul_flops

    # each ratio is the quotient of the reported step times
    (ratio,) = report["ratios"]
    step = {mode: row["step_s_median"] for mode, row in rows.items()}
    assert ratio["jit_over_eager"] == pytest.approx(step["eager"] / step["jit"])
    assert ratio["jit_over_xla_default"] == pytest.approx(step["jit-xla"] / step["jit"])
    if bench.torch_available():
        best_torch = min(step[m] for m in bench.TORCH_MODES)
        assert ratio["jit_over_best_torch"] == pytest.approx(best_torch / step["jit"])
    else:
        assert ratio["jit_over_best_torch"] is None

    numerics = report["numerics"][0]
    assert numerics["loss_abs_diff"] < 1e-5 and numerics["params_max_abs_diff"] < 1e-4
    vary = report["vary_batch"]
    assert [(r["mode"], r["batch_size"], r["new_shape"]) for r in vary] == [
        (mode, size, new) for mode in ("eager", "jit") for size, new in ((8, True), (16, True), (8, False))]
    assert all(r["compilations"] == 0 for r in vary if not r["new_shape"])  # a seen shape never recompiles
    assert all(r["compilations"] == 1 for r in vary if r["mode"] == "jit" and r["new_shape"])
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(tmp_path.glob("*.tmp"))
    out = capsys.readouterr().out
    assert "| model | what | batch | mode |" in out and f"mlp train b{BATCH}:  jit/eager " in out


def test_infer_mode_and_skips(monkeypatch, jax_modes_here):
    rows = bench.run(["mlp"], ["jit"], batch_size=BATCH, steps=STEPS, what="infer", log=None)
    assert rows[0]["what"] == "infer" and rows[0]["compilations"] == 1
    assert rows[0]["images_per_s"] == pytest.approx(BATCH / rows[0]["step_s_median"])
    monkeypatch.setattr(host, "torch_available", lambda: False)
    rows = bench.run(["mlp"], ["torch-eager"], batch_size=BATCH, steps=STEPS, log=None)
    assert "torch is not installed" in rows[0]["skipped"] and "step_s_median" not in rows[0]
    assert suite.ratios(rows) == [{"model": "mlp", "what": "train", "batch_size": BATCH, "jit_over_eager": None,
                                   "jit_over_xla_default": None, "jit_over_best_torch": None}]


def test_pytorch_races_on_jaxs_device_or_says_why_not():
    assert cases.torch_device("cpu", cuda_available=False) == "cpu"
    assert cases.torch_device("gpu", cuda_available=True) == "cuda"
    with pytest.raises(ValueError, match="sees no CUDA device: its rows would time the CPU"):
        cases.torch_device("gpu", cuda_available=False)
    with pytest.raises(ValueError, match="PyTorch has no backend for it"):
        cases.torch_device("tpu", cuda_available=True)


@pytest.mark.skipif(not bench.torch_available(), reason="needs PyTorch (the torch extra)")
def test_the_pytorch_child_is_told_jaxs_platform(monkeypatch):
    # The bench's process tells each case where JAX runs; PyTorch's child refuses a platform it cannot race on
    # (rather than timing the CPU beside a TPU), and the row says so.
    monkeypatch.setattr(suite.jax, "default_backend", lambda: "tpu")
    (row,) = bench.run(["mlp"], ["torch-eager"], batch_size=BATCH, steps=STEPS, log=None)
    assert "PyTorch has no backend for it" in row["skipped"] and "step_s_median" not in row


def test_a_bench_cut_short_keeps_the_cases_it_measured(tmp_path, monkeypatch):
    # The second case is interrupted (a time limit, Ctrl-C): the JSON file already holds the first one.
    out_json = tmp_path / "bench.json"
    measure = cases.measure_case
    calls = []

    def interrupted_second(mode, case, torch_python=None):
        calls.append(mode)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return measure(mode, case, torch_python)

    monkeypatch.setattr(cases, "measure_case", interrupted_second)
    with pytest.raises(KeyboardInterrupt):
        cli.main(["--models", "mlp", "--modes", "jit,eager", "--batch-size", str(BATCH), "--steps", str(STEPS),
                  "--json", str(out_json)])
    report = json.loads(out_json.read_text())
    assert report["complete"] is False and "rows" not in report
    assert [(r["model"], r["mode"]) for r in report["rows_measured"]] == [("mlp", "jit")]
    assert report["rows_measured"][0]["step_s_median"] > 0 and report["peak_gflops"] > 0


def test_flops_without_an_analysis_are_counted_on_the_cpu_and_shown_as_unknown_where_none(monkeypatch):
    class NoAnalysis:  # what a GPU/TPU plugin's lowered program does (PJRT's C API)
        def cost_analysis(self):
            raise NotImplementedError("cost analysis")

    assert timing.xla_flops(NoAnalysis()) is None
    # On an accelerator the step is lowered again for the CPU and counted there: the same model FLOPs.
    case = cases.Case("mlp", "train", BATCH)
    model, state, batch = cases.case_inputs(case)
    one_step = cases.step_program(model, state, batch, "train")
    on_cpu = cases.step_flops(one_step, "float32")
    counted = []

    def first_unknown(lowered):
        counted.append(lowered)
        return None if len(counted) == 1 else timing.xla_flops.__wrapped__(lowered)

    first_unknown.__wrapped__ = timing.xla_flops
    monkeypatch.setattr(timing, "xla_flops", first_unknown)
    monkeypatch.setattr(cases.jax, "default_backend", lambda: "gpu")
    assert cases.step_flops(one_step, "float32") == on_cpu > 0 and len(counted) == 2
    # A row without FLOPs prints '-' for GFLOP/s and % peak, not 0.0.
    row = _row("jit", 1.0) | {"flops_per_step": None}  # no gflops_per_s / pct_of_peak, as `_derive` leaves it
    line = [cells for cells in report.speed_table([row]).splitlines() if cells.startswith("| mlp")][0]
    assert [c.strip() for c in line.split("|")[8:10]] == ["-", "-"]


def test_the_peak_matmul_is_large_enough_to_time_on_an_accelerator():
    assert host.peak_matmul_size("cpu") == host.PEAK_MATMUL_SIZE == 2048
    assert host.peak_matmul_size("gpu") == host.peak_matmul_size("tpu") == host.PEAK_MATMUL_SIZE_ACCELERATOR == 8192


def test_pytorch_children_build_their_batch_with_jax_on_the_cpu(monkeypatch):
    # JAX in PyTorch's child makes the synthetic batch only: on a GPU host it must not start a second CUDA client.
    seen = {}

    def fake_run(argv, env, **kwargs):
        seen[argv[3]] = env
        row = {key: 1.0 for key in cases.MEASURED_KEYS}
        return subprocess.CompletedProcess(argv, 0, stdout=cases.ROW_MARK + json.dumps(row) + "\n", stderr="")

    monkeypatch.setattr(cases.subprocess, "run", fake_run)
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    case = cases.Case("mlp", "train", BATCH)
    cases.in_child(case, mode="torch-eager")
    cases.in_child(case, mode="jit")
    assert seen["torch-eager"]["JAX_PLATFORMS"] == "cpu" and "JAX_PLATFORMS" not in seen["jit"]


def _scan_program(model, state, batch, what, length=4):
    """`length` train steps per call, as one `jax.lax.scan` over a stack of the same batch."""
    if what != "train":
        raise ValueError("scan runs the train step only")
    stacked = jax.tree.map(lambda x: jnp.broadcast_to(x, (length, *x.shape)), batch)

    def train_epoch(state, batches):
        return jax.lax.scan(cases.train_step(), state, batches)

    return cases.Program(train_epoch, (state, stacked), carry=True, steps_per_call=length)


def test_a_new_mode_is_one_table_entry(monkeypatch, jax_modes_here):
    """A whole-epoch scan mode, registered as one entry: per-step times and FLOPs, one compilation, ratios intact."""
    scan = cases.Mode("scan", "jax", functools.partial(cases.jax_case, program=_scan_program, compiled=True),
                      "4 train steps per call as one jax.lax.scan")
    monkeypatch.setitem(cases.MODE_TABLE, "scan", scan)
    rows = bench.run(["mlp"], ["jit", "scan"], batch_size=BATCH, steps=8, log=None)
    jit, scanned = rows
    assert "skipped" not in scanned, scanned
    assert scanned["compilations"] == 1
    assert scanned["steps_timed"] == 5 * 4  # 8 steps = 2 calls, at least one call per segment, 4 steps a call
    assert scanned["flops_per_step"] == jit["flops_per_step"]  # one step's FLOPs, not the loop body's once
    assert scanned["images_per_s"] == pytest.approx(BATCH / scanned["step_s_median"])
    assert suite.ratios(rows)[0]["jit_over_eager"] is None
    (skipped,) = bench.run(["mlp"], ["scan"], batch_size=BATCH, steps=8, what="infer", log=None)
    assert skipped["skipped"] == "ValueError: scan runs the train step only"


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown mode"):
        bench.run(["mlp"], ["graph"], log=None)
    with pytest.raises(ValueError, match="unknown model"):
        bench.run(["resnet9"], ["jit"], log=None)
    with pytest.raises(ValueError, match="what must be one of"):
        bench.run(["mlp"], ["jit"], what="predict", log=None)
    assert cli.main(["--models", "resnet9"]) == 2
    assert cli.main(["--models", "mlp", "--modes", "graph"]) == 2


def test_the_modes_table_is_the_one_list_of_modes():
    assert ROW_KEYS == {"model", "mode", "what", "batch_size", "dtype", "images_per_s", "gflops_per_s",
                        "pct_of_peak"} | set(cases.MEASURED_KEYS)
    assert bench.MODES == tuple(cases.MODE_TABLE) == ("eager", "jit", "jit-xla", "torch-eager", "torch-compile")
    assert bench.TORCH_MODES == tuple(m.name for m in cases.MODE_TABLE.values() if m.framework == "torch")
    assert all(m.framework in ("jax", "torch") and m.description for m in cases.MODE_TABLE.values())
    assert cli.parser().get_default("modes") == ",".join(bench.MODES)


def test_machine_facts():
    facts = bench.machine()
    assert facts["cpu"] == host.cpu_model() and facts["cores"] == os.cpu_count() and facts["jax"] == jax.__version__
    assert ("torch" in facts) == bench.torch_available()
    assert PEAK_GFLOPS(128, repeats=1) > 0


def test_one_cli_run_covers_several_batch_sizes_and_both_train_and_inference(tmp_path, jax_modes_here):
    out_json = tmp_path / "bench.json"
    assert cli.main(["--models", "mlp", "--modes", "jit", "--batch-size", "4,8", "--what", "train,infer",
                     "--steps", str(STEPS), "--json", str(out_json)]) == 0
    report = json.loads(out_json.read_text())
    assert [(r["what"], r["batch_size"]) for r in report["rows"]] == [
        ("train", 4), ("train", 8), ("infer", 4), ("infer", 8)]
    assert all(r["images_per_s"] > 0 for r in report["rows"])
    assert {(r["what"], r["batch_size"]) for r in report["ratios"]} == {
        ("train", 4), ("train", 8), ("infer", 4), ("infer", 8)}


@pytest.mark.parametrize(("argv", "message"), [
    (["--batch-size", "0"], "batch sizes must be positive"), (["--batch-size", "32,x"], "expected batch sizes"),
    (["--what", "train,pipeline"], "pipeline runs on its own"), (["--what", "predict"], "invalid choice")])
def test_bad_batch_sizes_and_whats_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_pipeline_takes_one_batch_size(capsys):
    assert cli.main(["--what", "pipeline", "--batch-size", "32,128"]) == 2
    assert "takes one --batch-size" in capsys.readouterr().err


def _row(mode, median, low=None, high=None, round_number=1, batch=BATCH):
    """A measured row as `run` makes it: only the fields `combine_rounds` and `ratios` read."""
    return {"model": "mlp", "mode": mode, "what": "train", "batch_size": batch, "dtype": "float32",
            "compile_s": 10.0 * round_number, "first_step_s": 10.0 * round_number, "trace_s": None,
            "flops_per_step": 1e9, "compilations": 1, "peak_memory_bytes": None, "step_s_median": median,
            "step_s_min": low or median, "step_s_max": high or median, "steps_timed": 5, "cpu_util": round_number,
            "images_per_s": batch / median}


def test_rounds_combine_into_one_row_per_case_and_ratios_pair_the_modes_round_by_round():
    # Three rounds of jit, torch-eager and a skipped torch-compile. Round 2 is a slow spell for jit only; the
    # per-round ratios are 2, 1 and 3 (median 2), where the ratio of the medians would be 4 / 2.5 = 1.6.
    jit = [0.002, 0.004, 0.0025]
    torch = [0.004, 0.004, 0.0075]
    rows = []
    for r in range(3):
        rows += [_row("jit", jit[r], jit[r] * 0.9, jit[r] * 1.1, r + 1),
                 _row("torch-eager", torch[r], round_number=r + 1),
                 {"model": "mlp", "mode": "torch-compile", "what": "train", "batch_size": BATCH, "dtype": "float32",
                  "skipped": f"broken in round {r + 1}"}]
        for row in rows[-3:-1]:
            del row["images_per_s"]  # combine_rounds derives it again
    combined = suite.combine_rounds(rows, rounds=3, peak=100.0)
    assert [r["mode"] for r in combined] == ["jit", "torch-eager", "torch-compile"]
    first = combined[0]
    assert first["step_s_median"] == 0.0025 and first["round_step_s"] == jit
    assert first["step_s_min"] == pytest.approx(0.0018) and first["step_s_max"] == pytest.approx(0.0044)
    assert first["steps_timed"] == 15 and first["cpu_util"] == 2.0 and first["compile_s"] == 10.0  # the cold round
    assert first["images_per_s"] == BATCH / 0.0025 and first["gflops_per_s"] == pytest.approx(1e9 / 0.0025 / 1e9)
    assert first["pct_of_peak"] == pytest.approx(first["gflops_per_s"])
    assert combined[2]["skipped"] == "broken in round 1" and "step_s_median" not in combined[2]
    (ratio,) = suite.ratios(combined)
    assert ratio["jit_over_best_torch"] == pytest.approx(2.0)
    assert ratio["jit_over_best_torch_range"] == pytest.approx([1.0, 3.0])
    assert ratio["jit_over_eager"] is None and "jit_over_eager_range" not in ratio
    assert report_ratio_line(ratio) == f"mlp train b{BATCH}:  jaxnets-jit/best-torch 2.00x [1.00-3.00]"


def report_ratio_line(ratio):
    from jaxnets import report

    return report.ratio_line(ratio)


def test_run_measures_every_case_once_per_round_and_says_which_round(capsys, monkeypatch):
    lines = []
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        bench.run(["mlp"], ["jit"], batch_size=BATCH, steps=STEPS, rounds=0, log=None)
    here = cases.Mode("jit-here", "jax", functools.partial(cases.jax_case, compiled=True), "jit in this process")
    monkeypatch.setitem(cases.MODE_TABLE, "jit-here", here)  # no child process per round: this checks the rounds
    (row,) = bench.run(["mlp"], ["jit-here"], batch_size=BATCH, steps=STEPS, rounds=2, log=lines.append)
    assert len(row["round_step_s"]) == 2 and row["steps_timed"] == 2 * STEPS
    assert row["step_s_min"] <= row["step_s_median"] <= row["step_s_max"]
    assert [line.split()[:2] for line in lines] == [["round", "1/2"], ["round", "2/2"]]
    with pytest.raises(SystemExit):
        cli.main(["--rounds", "0"])
    assert "must be at least 1" in capsys.readouterr().err


def _fake_python(tmp_path, jaxnets_dir, log):
    """An executable that answers `host.torch_interpreter`'s probe with `jaxnets_dir`, and a child's measurement
    with a row (the PyTorch modes' plumbing, without PyTorch); it appends its arguments to `log`."""
    row = {key: 1.0 for key in cases.MEASURED_KEYS} | {"step_s_median": 0.01, "step_s_min": 0.01,
                                                        "step_s_max": 0.01, "compilations": None}
    probe = json.dumps({"torch": "9.9", "torch_threads": 3, "python": "3.99", "jaxnets": str(jaxnets_dir)})
    script = tmp_path / "python"
    script.write_text(f"""#!/bin/sh
echo "$@" >> {log}
case "$2" in
  *torch_threads*) echo '{probe}' ;;
  *) echo '{cases.ROW_MARK}{json.dumps(row)}' ;;
esac
""")
    script.chmod(0o755)
    return str(script)


def test_torch_modes_may_run_under_another_python_that_imports_this_jaxnets(tmp_path, capsys):
    ours = os.path.dirname(os.path.abspath(bench.__file__)).rsplit(os.sep, 1)[0]
    log = tmp_path / "calls.txt"
    fake = _fake_python(tmp_path, ours, log)
    assert host.torch_interpreter(fake)["torch"] == "9.9"
    facts = bench.machine(fake)
    assert facts["torch"] == "9.9" and facts["torch_threads"] == 3 and facts["torch_python_version"] == "3.99"
    (row,) = bench.run(["mlp"], ["torch-eager"], batch_size=BATCH, steps=STEPS, log=None, torch_python=fake)
    assert row["step_s_median"] == 0.01 and row["images_per_s"] == BATCH / 0.01
    assert "torch-eager" in log.read_text().splitlines()[-1]  # the child ran under the given interpreter

    elsewhere = _fake_python(tmp_path / "..", tmp_path / "other_checkout", tmp_path / "other.txt")
    with pytest.raises(ValueError, match="imports jaxnets from .*other_checkout"):
        host.torch_interpreter(elsewhere)
    (skipped,) = bench.run(["mlp"], ["torch-eager"], batch_size=BATCH, steps=STEPS, log=None, torch_python=elsewhere)
    assert "the PyTorch modes must run the same model code" in skipped["skipped"]
    with pytest.raises(ValueError, match="cannot run the PyTorch interpreter"):
        host.torch_interpreter(str(tmp_path / "no-such-python"))
    assert cli.main(["--models", "mlp", "--modes", "torch-eager", "--torch-python", str(tmp_path / "nope")]) == 2
    assert "--torch-python: cannot run" in capsys.readouterr().err
    not_python = tmp_path / "false"
    not_python.write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named torch' >&2\nexit 1\n")
    not_python.chmod(0o755)
    with pytest.raises(ValueError, match="cannot import torch and jaxnets .*No module named torch"):
        host.torch_interpreter(str(not_python))


def test_pipeline_benchmark_report_times_both_placements_and_picks_the_loaders_default():
    from jaxnets import data
    from jaxnets.bench import pipeline

    result = pipeline.run(batch_size=32, step_steps=2, model="lenet-cifar", num_examples=128)
    assert result["dataset"] == "synthetic (128 images)" and result["model"] == "lenet-cifar"
    assert result["host"]["resident"] is False and result["resident"]["resident"] is True
    assert all(result[p]["batches"] == 2 * 128 // 32 for p in ("host", "resident"))  # two timed epochs
    default = "resident" if data.keeps_data_on_device(jax.default_backend(), 128 * 32 * 32 * 3, None) else "host"
    assert result["pipeline"] == result[default]
    assert result["ratio"] == pytest.approx(result["pipeline"]["images_per_s"] / result["train"]["images_per_s"])
    assert result["train"]["images_per_s"] == pytest.approx(32 / result["train"]["step_s"])
    json.dumps(result)  # the CLI writes it as JSON


@pytest.mark.slow  # a benchmark tool's bookkeeping (times real layers): CI runs it, the quick lane does not
def test_conv_layers_reads_each_models_convolutions_from_the_model_and_counts_them():
    from jaxnets.bench import conv_layers

    specs = conv_layers.model_convolutions("resnet18", 4)
    resnet = {spec[0]: spec[-1] for spec in specs}
    # stem, 4 + 4 + 4 + 4 block convolutions (one stride-2 3x3 from stage 2 on), three 1x1 stride-2 shortcuts
    assert sum(resnet.values()) == 20 and resnet["3x3 3->64 @32"] == 1 and resnet["3x3 64->64 @32"] == 4
    assert resnet["3x3 s2 64->128 @32"] == resnet["1x1 s2 64->128 @32"] == resnet["1x1 s2 256->512 @8"] == 1
    assert resnet["3x3 512->512 @4"] == 3
    # the fixed list (the default run) has the same shapes
    assert {spec[1:8] for spec in conv_layers.LAYERS if "resnet18" in spec[8]} == {spec[1:8] for spec in specs}

    rows = conv_layers.run(batch_size=2, rounds=1, log=None, layer_specs=conv_layers.model_convolutions("lenet", 2))
    assert [r["count"] for r in rows] == [1, 1]
    totals = conv_layers.totals_per_step(rows)
    assert totals["jaxnets"] == pytest.approx(sum(r["jaxnets_ms"] for r in rows))
    assert "| **all convolutions** |" in conv_layers.table(rows)
    # jaxnets' oneDNN handler is timed wherever it runs, whether or not this CPU's rule takes it
    from jaxnets import backend, onednn

    handler = backend.onednn_handler_problem() is None and onednn.build.dtype_works("float32")
    assert all(("handler_ms" in r) == handler for r in rows)
    assert ("oneDNN handler (ms)" in conv_layers.table(rows)) == handler
    assert ("handler" in totals) == handler


def test_step_profile_groups_operations_by_kind_and_skips_the_runtime():
    from jaxnets.bench import step_profile

    assert step_profile.kind_of("custom-call.35.clone__onednn$convolution") == "onednn convolution"
    assert step_profile.kind_of("transpose_copy_fusion.58") == "transpose_copy_fusion"
    assert step_profile.kind_of("convolution-base-dilated.1") == "convolution-base-dilated"
    for runtime in ("ThunkExecutor::Execute", "$api.py:2778 x", "Wait for donation holds",
                    "ThreadpoolListener::Record"):
        assert step_profile.kind_of(runtime) is None, runtime
    events = [{"ph": "X", "name": "ynn_fusion.3", "dur": 3000}, {"ph": "X", "name": "ynn_fusion.9", "dur": 1000},
              {"ph": "X", "name": "transpose_copy_fusion.1", "dur": 6000}, {"ph": "i", "name": "ynn_fusion.1"},
              {"ph": "X", "name": "ThunkExecutor::Execute", "dur": 99000}]
    kinds = step_profile.summarize(events, steps=2)
    assert list(kinds) == ["transpose_copy_fusion", "ynn_fusion"]  # largest first; the runtime's event skipped
    assert kinds["ynn_fusion"] == pytest.approx({"ms_per_step": 2.0, "calls_per_step": 1.0, "fastest_ms": 2.0,
                                                 "over_fastest_ms": 0.0})


def test_step_profile_names_custom_calls_by_target_and_sums_each_operations_fastest_run():
    from jaxnets.bench import step_profile

    hlo = (' %ffi_call.245 = (bf16[32,16,16,128]{3,2,1,0}, f32[128]{0}) custom-call(%ffi_call.244, %p.1), '
           'custom_call_target="jaxnets_onednn_batch_norm_forward", api_version=API_VERSION_TYPED_FFI\n'
           '  %ffi_call.249 = bf16[32,16,16,128]{3,2,1,0} custom-call(%a, %b), custom_call_target='
           '"jaxnets_onednn_convolution", operand_layout_constraints={bf16[32,16,16,128]{3,2,1,0}}\n'
           '  %add_fusion.2 = f32[128]{0} fusion(%x, %y), kind=kLoop, calls=%fused_computation.2\n')
    targets = step_profile.custom_call_targets(hlo)
    assert targets == {"ffi_call.245": "jaxnets_onednn_batch_norm_forward",
                       "ffi_call.249": "jaxnets_onednn_convolution"}
    assert step_profile.kind_of("ffi_call.249", targets) == "jaxnets_onednn_convolution"
    assert step_profile.kind_of("ffi_call.7", targets) == "ffi_call"  # not in the program's text: by its name
    # Three steps: the convolution's fastest run is 5 ms; one slow step (11 ms) adds 2 ms a step on average. The
    # batch norm runs twice a step (two events of one name per step) at 1 ms, undisturbed.
    events = [{"ph": "X", "name": "ffi_call.249", "dur": d} for d in (5000, 11000, 5000)]
    events += [{"ph": "X", "name": "ffi_call.245", "dur": 1000}] * 6
    kinds = step_profile.summarize(events, steps=3, targets=targets)
    assert kinds["jaxnets_onednn_convolution"] == pytest.approx(
        {"ms_per_step": 7.0, "calls_per_step": 1.0, "fastest_ms": 5.0, "over_fastest_ms": 2.0})
    assert kinds["jaxnets_onednn_batch_norm_forward"] == pytest.approx(
        {"ms_per_step": 2.0, "calls_per_step": 2.0, "fastest_ms": 2.0, "over_fastest_ms": 0.0})


@pytest.mark.slow  # profiles real steps: CI runs it, the quick lane does not
def test_step_profile_of_a_real_step_reports_its_operations():
    from jaxnets.bench import step_profile

    result = step_profile.run("lenet", batch_size=4, steps=2, warmup=1)
    assert result["kinds"], "the profiler reported no operation"
    assert 0 < result["attributed_ms"]
    assert all(v["calls_per_step"] > 0 for v in result["kinds"].values())
    assert "| **step (wall, under the profiler)** |" in step_profile.table(result)
    assert all(0 <= v["fastest_ms"] <= v["ms_per_step"] + 1e-9 for v in result["kinds"].values())


@pytest.mark.slow  # trains LeNet in both frameworks: CI runs it, the quick lane does not
@pytest.mark.skipif(not bench.torch_available(), reason="needs PyTorch (the torch extra)")
def test_same_start_trains_both_frameworks_from_the_same_weights_on_the_same_batches():
    from jaxnets.bench import same_start

    data_batches = same_start.batches("digits", None, steps=3, batch_size=32)
    assert len(data_batches) == 3 and data_batches[0][0].shape == (32, 28, 28, 1)
    assert abs(float(data_batches[0][0].mean())) < 0.5  # normalised with the catalog's statistics
    result = same_start.run("lenet", data_batches, lr=0.05)
    assert len(result["jaxnets"]) == len(result["torch"]) == 3
    assert result["jaxnets"][0] == pytest.approx(result["torch"][0], rel=1e-5)  # same weights, same batch
    assert result["jaxnets"][2] == pytest.approx(result["torch"][2], rel=1e-3)  # and the same updates
    assert result["jaxnets"][2] != result["jaxnets"][0]
    assert "| 3 |" in same_start.table(result)
    with pytest.raises(ValueError, match="need 64000 images"):
        same_start.batches("digits", None, steps=500, batch_size=128)


def test_interleaved_alternates_the_settings_and_flips_their_order_every_repetition():
    from jaxnets.bench import interleaved

    calls = []
    steps = {name: functools.partial(calls.append, name) for name in ("a", "b", "c")}
    times = interleaved.alternate(steps, reps=3, steps_per_rep=2, warmup=1)
    assert calls[:3] == ["a", "b", "c"]  # one warm-up step each, untimed
    assert calls[3:] == ["a", "a", "b", "b", "c", "c", "c", "c", "b", "b", "a", "a", "a", "a", "b", "b", "c", "c"]
    assert {name: len(values) for name, values in times.items()} == {"a": 3, "b": 3, "c": 3}
    with pytest.raises(ValueError, match="must be >= 1"):
        interleaved.alternate(steps, reps=0, steps_per_rep=2)


def test_interleaved_summary_pairs_each_repetition_with_the_reference():
    from jaxnets.bench import interleaved

    # a drift (the host slowing 3x over the run) hits both settings alike; "eigen" is 10% slower in every pair
    times = {"fast": [1.0, 2.0, 3.0, 2.0], "eigen": [1.1, 2.2, 3.3, 1.8]}
    ref, other = interleaved.summarize(times)
    assert ref == {"setting": "fast", "ms_median": 2000.0, "ms_min": 1000.0, "ratio_median": 1.0, "faster_in": 0,
                   "reps": 4}
    assert other["ratio_median"] == pytest.approx(1.1) and other["faster_in"] == 1  # the last pair: 1.8 < 2.0
    assert other["ms_median"] == pytest.approx(2000.0)  # (1.8 + 2.2) / 2: medians alone would call it a tie


def test_interleaved_setting_is_scoped_and_only_in_process_settings_are_taken(monkeypatch):
    from jaxnets import backend
    from jaxnets.bench import interleaved

    monkeypatch.setenv(backend.ENV_VAR, "fast")
    with interleaved.cpu_setting("eigen"):
        assert backend.cpu_path_setting() == "eigen" and backend.conv_library("float32") in ("eigen", "xla")
    assert backend.cpu_path_setting() == "fast"
    monkeypatch.delenv(backend.ENV_VAR)
    with interleaved.cpu_setting("eigen"):
        pass
    assert backend.ENV_VAR not in os.environ
    with pytest.raises(ValueError, match="jit-xla"):
        with interleaved.cpu_setting("xla"):
            pass
    with pytest.raises(SystemExit):
        interleaved.main(["--settings", "fast,fast"])  # nothing to compare: a usage error, nothing compiled
    with pytest.raises(SystemExit):
        interleaved.main(["--reps", "0"])


def test_interleaved_settings_may_change_the_rule_this_cpu_takes_and_only_inside_their_block(monkeypatch):
    """`fast:eigen_max_batch=32`: the AVX2 row with its batch limit changed while the program traces, then back."""
    from jaxnets import backend
    from jaxnets.bench import interleaved

    assert interleaved.parse_setting("eigen") == ("eigen", {})
    assert interleaved.parse_setting("fast:eigen_max_batch=32+eigen_from_channels=none") == (
        "fast", {"eigen_max_batch": 32, "eigen_from_channels": None})
    assert interleaved.parse_setting("fast:batch_norm=0") == ("fast", {"batch_norm": False})
    assert interleaved.parse_setting("fast:dense=1") == ("fast", {"dense": True, "dense_jax_below": None})
    for bad, match in [("xla", "jit-xla"), ("fast:batch_norm=yes", "0 .XLA's. or 1"),
                       ("fast:library=eigen", "FIELD=VALUE"), ("fast:eigen_max_batch=",
                       "FIELD=VALUE"), ("fast:eigen_max_batch=big", "whole number"),
                       ("eigen:eigen_max_batch=32", "only 'fast'")]:
        with pytest.raises(ValueError, match=match):
            interleaved.parse_setting(bad)
    with pytest.raises(SystemExit):
        interleaved.main(["--settings", "fast,fast:eigen_max_batch=x"])  # a usage error, nothing compiled

    monkeypatch.setenv(backend.ENV_VAR, "fast")
    monkeypatch.setattr(backend, "cpu_flags", lambda: frozenset({"avx2"}))
    monkeypatch.setattr(backend, "library_works", lambda library, dtype: library == "onednn")
    rules = backend.CONV_RULES
    shipped = backend.conv_rule("float32").eigen_max_batch

    def library(batch):
        return backend.conv_library("float32", "cpu", in_channels=64, strides=(1, 1), batch=batch)

    with interleaved.rule_overrides("float32", {"eigen_max_batch": 32}):
        assert backend.conv_rule("float32").eigen_max_batch == 32
        assert (library(32), library(33)) == ("eigen", "onednn")
    assert backend.CONV_RULES is rules and backend.conv_rule("float32").eigen_max_batch == shipped
    with interleaved.rule_overrides("float32", {"eigen_from_channels": None}):
        assert library(8) == "onednn"  # no exception: every convolution in the row's library
    with interleaved.rule_overrides("float32", {"batch_norm": True}):  # the AVX2 row keeps batch norm in XLA
        assert backend.batch_norm_in_onednn("float32", "cpu")
    assert not backend.batch_norm_in_onednn("float32", "cpu")
    with pytest.raises(ValueError, match="no CONV_RULES row"):
        with interleaved.rule_overrides("bfloat16", {"eigen_max_batch": 32}):  # AVX2: no bfloat16 row
            pass
    assert backend.CONV_RULES is rules


def test_interleaved_cli_compiles_each_setting_and_writes_its_report(tmp_path, capsys):
    """LeNet at batch 8: each setting's own program (jaxnets' oneDNN calls only where its rules take them)."""
    from jaxnets import backend
    from jaxnets.bench import interleaved

    out = tmp_path / "ab.json"
    assert interleaved.main(["--model", "lenet", "--batch-size", "8", "--reps", "3", "--steps", "1",
                             "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    programs = report["programs"]
    assert programs["eigen"]["library"] == "eigen" and programs["eigen"]["handler_calls"] == 0
    assert programs["fast"]["library"] == backend.conv_library("float32")
    assert (programs["fast"]["handler_calls"] > 0) == (programs["fast"]["library"] == "onednn")
    assert [r["setting"] for r in report["rows"]] == ["fast", "eigen"]
    assert all(len(v) == 3 and min(v) > 0 for v in report["seconds_per_step"].values())
    assert report["machine"]["cpu"] == host.cpu_model()
    printed = capsys.readouterr().out
    assert "| fast | " in printed and "faster than reference in" in printed and "CPU flags:" in printed


@pytest.mark.skipif(sys.platform != "linux" or platform.machine() != "x86_64",
                    reason="jaxnets' oneDNN handler is built for x86-64 Linux only")
def test_conv_passes_times_each_pass_of_each_convolution_in_both_libraries(tmp_path, capsys):
    """LeNet at batch 4: both convolutions, three passes, two libraries; the totals are the counted sums."""
    from jaxnets.bench import conv_passes

    out = tmp_path / "passes.json"
    assert conv_passes.main(["--model", "lenet", "--batch-size", "4", "--rounds", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert [r["layer"] for r in rows] == ["3x3 1->6 @28", "3x3 6->16 @14"] and all(r["count"] == 1 for r in rows)
    for row in rows:  # 3 passes x 2 libraries, each timed
        times = [v for k, v in row.items() if k.endswith("_ms")]
        assert len(times) == 6 and min(times) > 0
    sums = report["totals_ms"]
    assert sums["forward_eigen"] == pytest.approx(sum(r["forward_eigen_ms"] for r in rows))
    assert sums["best"] <= min(sum(sums[f"{p}_{lib}"] for p in conv_passes.PASSES) for lib in conv_passes.LIBRARIES)
    printed = capsys.readouterr().out
    assert "weight grad: Eigen / oneDNN (ms)" in printed and "every pass in its faster library" in printed
    with pytest.raises(SystemExit):
        conv_passes.main(["--model", "lenet", "--rounds", "0"])


def test_conv_passes_refuses_to_time_a_library_that_computes_a_wrong_answer():
    from jaxnets.bench import conv_passes

    right = np.arange(1.0, 7.0)
    programs = {"forward": {"eigen": lambda: right, "onednn": lambda: right * (1 + 1e-5)},
                "weight_grad": {"eigen": lambda: right, "onednn": lambda: right[::-1]}}
    with pytest.raises(RuntimeError, match="weight_grad of XLA's Eigen and jaxnets' oneDNN handler differ"):
        conv_passes.check_agreement("3x3 64->64 @32", programs)
    conv_passes.check_agreement("3x3 64->64 @32", {"forward": programs["forward"]})  # within tolerance: no error


def test_a_setting_may_name_a_code_variant():
    from jaxnets.bench import interleaved

    assert interleaved.split_variant("fast") == ("fast", None)
    assert interleaved.split_variant("fast:dense=0@old") == ("fast:dense=0", "old")
    for bad in ("fast@", "fast@a@b"):
        with pytest.raises(ValueError, match="one variant after '@'"):
            interleaved.split_variant(bad)


VARIANT_FILE = '''
import contextlib, os
from jaxnets.bench import cases

def _log(line):
    with open(os.environ["VARIANT_LOG"], "a") as f:
        f.write(line + "\\n")

@contextlib.contextmanager
def probe():
    _log("enter")
    original = cases.train_step
    def train_step():
        step = original()
        def logged(state, batch):
            _log("traced")
            return step(state, batch)
        return logged
    cases.train_step = train_step
    try:
        yield
    finally:
        cases.train_step = original
        _log("exit")

VARIANTS = {"probe": probe}
'''


def test_interleaved_compiles_a_code_variant_inside_its_context(tmp_path, monkeypatch):
    """`fast@probe`: that setting's step is traced inside the variant's context, the reference's outside it."""
    from jaxnets.bench import cases, interleaved

    path = tmp_path / "variants.py"
    path.write_text(VARIANT_FILE)
    log = tmp_path / "log.txt"
    monkeypatch.setenv("VARIANT_LOG", str(log))
    variants = interleaved.load_variants(path)
    original = cases.train_step
    result = interleaved.run(cases.Case(model="mlp", what="train", batch_size=4), ("fast", "fast@probe"), reps=2,
                             steps_per_rep=1, log=None, variants=variants)
    assert log.read_text().split() == ["enter", "traced", "exit"]  # traced once, inside; timing runs compiled code
    assert cases.train_step is original
    assert [r["setting"] for r in result["rows"]] == ["fast", "fast@probe"]
    assert all(len(v) == 2 and min(v) > 0 for v in result["seconds_per_step"].values())


def test_unknown_or_missing_variants_are_clear_errors(tmp_path):
    from jaxnets.bench import cases, interleaved

    case = cases.Case(model="mlp", what="train", batch_size=4)
    with pytest.raises(ValueError, match="unknown code variant 'old' .known: none: pass --variants FILE"):
        interleaved.run(case, ("fast", "fast@old"), reps=1, steps_per_rep=1, log=None)
    with pytest.raises(ValueError, match="no such file"):
        interleaved.load_variants(tmp_path / "missing.py")
    empty = tmp_path / "empty.py"
    empty.write_text("X = 1\n")
    with pytest.raises(ValueError, match="must define VARIANTS"):
        interleaved.load_variants(empty)
    (tmp_path / "v.py").write_text(VARIANT_FILE)
    with pytest.raises(ValueError, match="unknown code variant 'old' .known: probe"):
        interleaved.run(case, ("fast", "fast@old"), reps=1, steps_per_rep=1, log=None,
                        variants=interleaved.load_variants(tmp_path / "v.py"))
    with pytest.raises(SystemExit):
        interleaved.main(["--variants", str(empty), "--settings", "fast,fast@x"])  # a usage error
