"""The benchmark runs: every model x mode (`run`), eager == jit numerics, and the recompile demonstration."""

from __future__ import annotations

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
        what: str = "train", log: Callable[[str], None] | None = print) -> list[dict]:
    """Benchmark every model x mode, one framework and one case at a time.

    Args:
      model_names: `jaxnets.models` names.
      modes: names in `cases.MODE_TABLE`; torch modes are skipped (with a note) without torch.
      batch_size: images per step.
      steps: timed steps per case (split into 5 segments); or None to use `min_time`.
      min_time: seconds of timed steps per case.
      dtype: 'float32' or 'bfloat16' (compute dtype).
      what: 'train' (forward + backward + SGD update) or 'infer' (forward).
      log: called with one line per case as it finishes (None: quiet).

    Returns:
      one dict per case: model, mode, what, batch_size, dtype, then either
      'skipped' (the reason: no torch, or the error the case raised) or the
      measured fields (`cases.MEASURED_KEYS`) plus `images_per_s` and, where
      FLOPs are known, `gflops_per_s` and `pct_of_peak` (of `host.peak_gflops()`).

    Raises:
      ValueError: an unknown model, mode or `what`.
    """
    unknown = [m for m in modes if m not in cases.MODE_TABLE]
    if unknown:
        raise ValueError(f"unknown mode(s) {unknown}; choose from {tuple(cases.MODE_TABLE)}")
    if what not in cases.WHAT:
        raise ValueError(f"what must be one of {cases.WHAT}; got {what!r}")
    for name in model_names:
        models.create(name)  # raises a clear error for unknown names
    peak = host.peak_gflops()
    rows = []
    for name in model_names:
        for mode in modes:
            row = {"model": name, "mode": mode, "what": what, "batch_size": batch_size, "dtype": dtype}
            if cases.MODE_TABLE[mode].framework == "torch" and not host.torch_available():
                row["skipped"] = "torch is not installed (pip install 'jaxnets[torch]')"
            else:
                case = cases.Case(name, what, batch_size, jnp.dtype(dtype).name, steps, min_time)
                try:
                    row.update(cases.measure_case(mode, case))
                except Exception as err:  # report and continue: one broken backend must not hide the rest
                    row["skipped"] = describe(err)
            if "step_s_median" in row:
                row["images_per_s"] = batch_size / row["step_s_median"]
                if row.get("flops_per_step"):
                    row["gflops_per_s"] = row["flops_per_step"] / row["step_s_median"] / 1e9
                    row["pct_of_peak"] = 100 * row["gflops_per_s"] / peak
            rows.append(row)
            if log:
                log(report.speed_line(row))
    return rows


def ratios(rows: list[dict]) -> list[dict]:
    """Per (model, what, batch): jit/eager, jit/jit-xla and jaxnets-jit / best-torch throughput (None if absent)."""
    out = []
    keys = sorted({(r["model"], r["what"], r["batch_size"]) for r in rows}, key=str)
    for key in keys:
        ips = {r["mode"]: r["images_per_s"] for r in rows if (r["model"], r["what"], r["batch_size"]) == key
               and "images_per_s" in r}
        torch_best = max((v for m, v in ips.items() if m in cases.TORCH_MODES), default=None)
        jit = ips.get("jit")
        out.append({"model": key[0], "what": key[1], "batch_size": key[2],
                    "jit_over_eager": jit / ips["eager"] if jit and "eager" in ips else None,
                    "jit_over_xla_default": (jit / ips[cases.XLA_DEFAULT_MODE]
                                             if jit and cases.XLA_DEFAULT_MODE in ips else None),
                    "jit_over_best_torch": jit / torch_best if jit and torch_best else None})
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
