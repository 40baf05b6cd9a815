"""The benchmark runs: every model x mode (`run`), eager == jit numerics, and the recompile demonstration."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from jaxnets import data, models, report
from jaxnets.bench import cases, host, timing
from jaxnets.errors import describe
from jaxnets.training import TrainState, make_steps, optimizers

# The two ways `make_steps` runs the same step; `numerics` and `vary_batch` compare them.
STEP_MODES = ("eager", "jit")


def run(model_names: Sequence[str] = ("mlp", "lenet", "resnet18", "vgg16"), modes: Sequence[str] = cases.MODES,
        batch_size: int = 128, steps: int | None = None, min_time: float | None = 2.0, dtype: str = "float32",
        what: str = "train", log: Callable[[str], None] | None = print, rounds: int = 1,
        torch_python: str | None = None, on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Benchmark every model x mode, one framework and one case at a time, `rounds` times over.

    Args:
      model_names: `jaxnets.models` names.
      modes: names in `cases.MODE_TABLE`; torch modes are skipped (with a note) without torch.
      batch_size: images per step.
      steps: timed steps per case and round (split into 5 segments); or None to use `min_time`.
      min_time: seconds of timed steps per case and round.
      dtype: 'float32' or 'bfloat16' (compute dtype).
      what: 'train' (forward + backward + SGD update) or 'infer' (forward).
      log: called with one line per case as it finishes (None: quiet).
      rounds: how many times to measure the whole sweep, one round after the other (`combine_rounds`): on a
        shared machine a slow spell then lands in one round of every mode, not in every round of one mode.
      torch_python: the Python interpreter the PyTorch modes' child processes run (`host.torch_interpreter`;
        None: this one).
      on_row: called with each case's row as soon as it is measured (every round's, before `combine_rounds`):
        `jaxnets-bench --json` keeps the file current with it, so a run cut short keeps what it measured.

    Returns:
      one dict per case: model, mode, what, batch_size, dtype, then either
      'skipped' (the reason: no torch, or the error the case raised) or the
      measured fields (`cases.MEASURED_KEYS`) plus `images_per_s` and, where
      FLOPs are known, `gflops_per_s` and `pct_of_peak` (of `host.peak_gflops()`).
      With `rounds > 1`, `combine_rounds`' rows (each also has `round_step_s`).

    Raises:
      ValueError: an unknown model, mode or `what`, or `rounds < 1`.
    """
    unknown = [m for m in modes if m not in cases.MODE_TABLE]
    if unknown:
        raise ValueError(f"unknown mode(s) {unknown}; choose from {tuple(cases.MODE_TABLE)}")
    if what not in cases.WHAT:
        raise ValueError(f"what must be one of {cases.WHAT}; got {what!r}")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1; got {rounds}")
    for name in model_names:
        models.create(name)  # raises a clear error for unknown names
    peak = host.peak_gflops()
    rows = []
    for round_number in range(1, rounds + 1):
        for name in model_names:
            for mode in modes:
                case = cases.Case(name, what, batch_size, jnp.dtype(dtype).name, steps, min_time,
                                  platform=jax.default_backend())
                row = _measure_row(name, mode, case, peak, torch_python)
                rows.append(row)
                if on_row:
                    on_row(row)
                if log:
                    log((f"round {round_number}/{rounds} " if rounds > 1 else "") + report.speed_line(row))
    return combine_rounds(rows, rounds, peak) if rounds > 1 else rows


def _torch_problem(torch_python: str | None) -> str | None:
    """Why the PyTorch modes cannot run (in `torch_python`, else here), or None."""
    if torch_python is None:
        return None if host.torch_available() else "torch is not installed (pip install 'jaxnets[torch]')"
    try:
        host.torch_interpreter(torch_python)
    except ValueError as error:
        return str(error)
    return None


def _measure_row(name: str, mode: str, case: cases.Case, peak: float, torch_python: str | None) -> dict:
    """One case's row: `case` measured in `mode`, with its derived fields, or 'skipped' and why."""
    row = {"model": name, "mode": mode, "what": case.what, "batch_size": case.batch_size, "dtype": case.dtype}
    problem = _torch_problem(torch_python) if cases.MODE_TABLE[mode].framework == "torch" else None
    if problem:
        row["skipped"] = problem
    else:
        try:
            row.update(cases.measure_case(mode, case, torch_python))
        except Exception as err:  # report and continue: one broken backend must not hide the rest
            row["skipped"] = describe(err)
    if "step_s_median" in row:
        _derive(row, peak)
    return row


def _derive(row: dict, peak: float) -> None:
    """Fill `images_per_s`, and `gflops_per_s` / `pct_of_peak` where FLOPs are known, from `step_s_median`."""
    row["images_per_s"] = row["batch_size"] / row["step_s_median"]
    if row.get("flops_per_step"):
        row["gflops_per_s"] = row["flops_per_step"] / row["step_s_median"] / 1e9
        row["pct_of_peak"] = 100 * row["gflops_per_s"] / peak


def combine_rounds(rows: list[dict], rounds: int, peak: float) -> list[dict]:
    """One row per case from `rounds` rounds of `run`'s rows (in round order, every case once per round).

    A case skipped in any round is skipped (the first reason). Otherwise its
    `step_s_median` is the median of the rounds' medians, `step_s_min` /
    `step_s_max` the extremes of every segment of every round, `steps_timed` their sum, `cpu_util` the
    mean; compile and first-step times are the first round's (the cold ones); `round_step_s` lists each round's
    median, in order, for `ratios` to pair modes round by round.
    """
    per_case = len(rows) // rounds
    combined = []
    for index in range(per_case):
        group = rows[index::per_case]
        skipped = next((r for r in group if "skipped" in r), None)
        if skipped is not None:
            combined.append(skipped)
            continue
        medians = [r["step_s_median"] for r in group]
        row = {**group[0], "step_s_median": statistics.median(medians),
               "step_s_min": min(r["step_s_min"] for r in group), "step_s_max": max(r["step_s_max"] for r in group),
               "steps_timed": sum(r["steps_timed"] for r in group),
               "cpu_util": statistics.fmean(r["cpu_util"] for r in group), "round_step_s": medians}
        _derive(row, peak)
        combined.append(row)
    return combined


# `ratios`' keys: (name, mode in the numerator, modes whose fastest is the denominator).
_RATIOS = (("jit_over_eager", ("eager",)), ("jit_over_xla_default", (cases.XLA_DEFAULT_MODE,)),
           ("jit_over_best_torch", cases.TORCH_MODES))


def ratios(rows: list[dict]) -> list[dict]:
    """Per (model, what, batch): jit/eager, jit/jit-xla and jaxnets-jit / best-torch throughput (None if absent).

    From rows of several rounds (`round_step_s`), each ratio is computed round
    by round (the modes measured minutes apart, not a whole sweep apart) and
    its median is reported, with `<name>_range` its [min, max] over the rounds.
    """
    out = []
    keys = sorted({(r["model"], r["what"], r["batch_size"]) for r in rows}, key=str)
    for key in keys:
        steps = {r["mode"]: r.get("round_step_s", [r["step_s_median"]]) for r in rows
                 if (r["model"], r["what"], r["batch_size"]) == key and "images_per_s" in r}
        entry = {"model": key[0], "what": key[1], "batch_size": key[2]}
        for name, denominators in _RATIOS:
            present = [m for m in denominators if m in steps]
            if "jit" not in steps or not present:
                entry[name] = None
                continue
            per_round = [min(steps[m][i] for m in present) / steps["jit"][i] for i in range(len(steps["jit"]))]
            entry[name] = statistics.median(per_round)
            if len(per_round) > 1:
                entry[f"{name}_range"] = [min(per_round), max(per_round)]
        out.append(entry)
    return out


def table(rows: list[dict]) -> str:
    """A markdown table of `run`'s rows (`report.speed_table`)."""
    return report.speed_table(rows)


def print_table(rows: list[dict]) -> None:
    """Print the markdown table of `run`'s rows, then one line of ratios per (model, what, batch)."""
    print(report.speed_table(rows))
    for ratio in ratios(rows):
        print(report.ratio_line(ratio))


def plot(rows: list[dict], path: str) -> str:
    """Bar chart of images/s per model and mode (log scale), written atomically as a PNG; returns `path`."""
    report.speed_chart(rows, path)
    return path


def numerics(model_name: str, k: int = 3, batch_size: int = 16, seed: int = 0) -> dict:
    """Loss and parameters after `k` train steps, eager vs jit, from the same seed and batches.

    Returns:
      model, steps, loss_eager, loss_jit, loss_abs_diff, params_max_abs_diff.
    """
    model = cases.bench_model(model_name)
    batches = data.synthetic_batches(model.input_shape, batch_size, k, num_classes=cases.NUM_CLASSES, seed=seed)
    out = {}
    for mode in STEP_MODES:
        state = TrainState.create(model, cases.bench_optimizer(0.001), seed=seed)
        steps = make_steps(mode=mode)
        for batch in batches:
            state, metrics = steps.train(state, batch)
        out[mode] = (float(metrics["loss_sum"] / metrics["count"]), state.params)
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(out["eager"][1]),
                                                               jax.tree.leaves(out["jit"][1]), strict=True))
    return {"model": model_name, "steps": k, "loss_eager": out["eager"][0], "loss_jit": out["jit"][0],
            "loss_abs_diff": abs(out["eager"][0] - out["jit"][0]), "params_max_abs_diff": diff}


def vary_batch(model_name: str = "lenet", batch_sizes: Sequence[int] = (32, 64, 32, 48), seed: int = 0) -> list[dict]:
    """The static graph's price: each new batch shape recompiles the jitted step.

    Returns one row per (mode, call): the batch size, whether it is new, the
    XLA compilations the call triggered and its wall time. The eager path also
    compiles small per-op kernels for unseen shapes, but never the whole step.
    """
    model = cases.bench_model(model_name)
    counter = timing.compile_counter()
    rows = []
    for mode in STEP_MODES:
        steps = make_steps(mode=mode)
        state = TrainState.create(model, optimizers.sgd(0.01), seed=seed)
        seen = set()
        for size in batch_sizes:
            batch = data.synthetic_batch(model.input_shape, size, num_classes=cases.NUM_CLASSES, seed=seed)
            with counter.counting():
                start = time.perf_counter()
                state, metrics = steps.train(state, batch)  # thread the state: jit donates the old one
                jax.block_until_ready(metrics)
                seconds = time.perf_counter() - start
            rows.append({"mode": mode, "batch_size": size, "new_shape": size not in seen,
                         "compilations": counter.count, "compile_s": counter.seconds, "seconds": seconds})
            seen.add(size)
    return rows
