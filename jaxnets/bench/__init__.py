"""Eager vs jit (vs PyTorch), measured in one run on one machine.

    >>> from jaxnets import bench
    >>> rows = bench.run(["mlp", "lenet"], ["eager", "jit"], batch_size=128, steps=20)
    >>> bench.print_table(rows)

For every model x mode it reports the compile (or first-step) time apart
from the steady-state step time (median / min / max over timed segments after
warm-up), images/s, FLOPs per step (XLA's cost analysis of the compiled step;
PyTorch's FlopCounterMode for torch), achieved GFLOP/s and % of this
machine's peak (measured here with a large jitted matmul), process CPU
utilisation, peak memory where the backend reports it, and how many XLA
compilations the run triggered. Modes: 'eager' (the train step run op by op),
'jit' (one compiled program), 'jit-xla' (the same jit step with XLA's default CPU
convolutions, i.e. with `JAXNETS_CPU_CONV=xla`; measured in a child process
because that choice is made when JAX starts), 'torch-eager', 'torch-compile'.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxnets import backend, models
from jaxnets.data import Batch
from jaxnets.training import TrainState, make_steps, optimizers

JAX_MODES = ("eager", "jit")
XLA_DEFAULT_MODE = "jit-xla"  # jit with XLA's default CPU convolutions (jaxnets.backend switched off)
TORCH_MODES = ("torch-eager", "torch-compile")
MODES = JAX_MODES + (XLA_DEFAULT_MODE,) + TORCH_MODES
WHAT = ("train", "infer")

# The benchmark's MLP is the 784-512-512-10 net of the reference figures, not the
# texts' tiny 784-10-10-10 default.
BENCH_KWARGS: dict[str, dict] = {"mlp": dict(num_layers=2, hidden_size=512)}


def torch_available() -> bool:
    try:
        import torch  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------- machine facts

def machine() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "jax": jax.__version__, "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
            **backend.describe()}
    if torch_available():
        import torch  # noqa: PLC0415

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    return info


@functools.lru_cache(maxsize=None)
def peak_gflops(n: int = 2048, dtype: str = "float32", repeats: int = 10) -> float:
    """This machine's practical peak: GFLOP/s of a large jitted matmul (best of `repeats`)."""
    a = jnp.ones((n, n), dtype)
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, a).block_until_ready()
    best = min(_timed(lambda: matmul(a, a).block_until_ready()) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class CompileCounter:
    """Counts XLA backend compilations (via `jax.monitoring`) while active."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        self.count, self.seconds, self._active = 0, 0.0, False
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event: str, duration: float, **_) -> None:
        if self._active and event == self.EVENT:
            self.count += 1
            self.seconds += duration

    @contextlib.contextmanager
    def counting(self):
        self.count, self.seconds, self._active = 0, 0.0, True
        try:
            yield self
        finally:
            self._active = False


@functools.lru_cache(maxsize=1)
def _compile_counter() -> CompileCounter:
    return CompileCounter()  # one listener per process: listeners cannot be removed


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _measure(step: Callable[[], Any], *, steps: int | None, min_time: float | None, segments: int = 5,
             warmup: int = 2) -> dict:
    """Warm up, then time `segments` segments of k steps each (each ends in a device sync)."""
    for _ in range(warmup):
        step()
    if steps is None:  # pick k so that all segments together take about min_time
        probe = _timed(step)
        steps = max(segments, int((min_time or 2.0) / max(probe, 1e-6)))
    per_segment = max(1, steps // segments)
    times, cpu_start, wall_start = [], _cpu_seconds(), time.perf_counter()
    for _ in range(segments):
        times.append(_timed(lambda: [step() for _ in range(per_segment)]) / per_segment)
    wall = time.perf_counter() - wall_start
    return {"step_s_median": statistics.median(times), "step_s_min": min(times), "step_s_max": max(times),
            "steps_timed": per_segment * segments, "cpu_util": (_cpu_seconds() - cpu_start) / wall}


def _peak_memory() -> int | None:
    stats = jax.devices()[0].memory_stats()
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def _batch(model, batch_size: int, dtype, seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch_size, *model.input_shape)).astype(np.float32)
    y = rng.integers(0, 10, batch_size).astype(np.int32)
    return Batch(jnp.asarray(x, dtype), jnp.asarray(y), jnp.ones(batch_size, bool))


def _flops(lowered_or_compiled) -> float | None:
    cost = lowered_or_compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


# ----------------------------------------------------------------- JAX

def _jax_case(name: str, mode: str, what: str, batch_size: int, dtype, *, steps, min_time, seed: int = 0) -> dict:
    jax.clear_caches()  # no case may reuse another's executables: compile times are measured cold
    model = models.create(name, dtype=dtype, **BENCH_KWARGS.get(name, {}))
    batch = _batch(model, batch_size, dtype, seed)
    state = TrainState.create(model, optimizers.sgd(0.01, momentum=0.9, weight_decay=5e-4), seed=seed)
    train_step = make_steps(mode="eager").train  # the undecorated function
    infer = lambda variables, x: model.apply(variables, x, train=False)  # noqa: E731
    counter = _compile_counter()
    holder = {"state": state}

    # FLOPs of one step, from XLA's cost analysis of the lowered program (same for both modes).
    start = time.perf_counter()
    if what == "train":
        lowered = backend.jit(train_step, donate_argnums=(0,)).lower(state, batch)
    else:
        lowered = backend.jit(infer).lower(state.variables, batch.image)
    trace_s = time.perf_counter() - start  # tracing to a jaxpr + lowering to HLO, before XLA compiles
    flops = _flops(lowered)  # XLA's HLO cost analysis; compiling here would warm jit's cache

    compile_s = None
    run_train, run_infer = train_step, infer
    if mode == "jit":
        start = time.perf_counter()
        compiled = lowered.compile()
        compile_s = time.perf_counter() - start
        run_train = run_infer = compiled

    if what == "train":
        def step():
            holder["state"], metrics = run_train(holder["state"], batch)
            jax.block_until_ready(metrics)
    else:
        def step():
            run_infer(state.variables, batch.image).block_until_ready()
    with counter.counting():
        first = _timed(step)
        timing = _measure(step, steps=steps, min_time=min_time)
    compilations = counter.count + (1 if mode == "jit" else 0)
    return {"compile_s": compile_s if mode == "jit" else first, "first_step_s": first, "flops_per_step": flops,
            "trace_s": trace_s if mode == "jit" else None,
            "compilations": compilations, "peak_memory_bytes": _peak_memory(), **timing}


def _xla_default_case(name: str, what: str, batch_size: int, dtype, *, steps, min_time, seed: int = 0) -> dict:
    """The jit case in a child process started with `JAXNETS_CPU_CONV=xla` (XLA's own CPU defaults)."""
    args = dict(name=name, mode="jit", what=what, batch_size=batch_size, dtype=jnp.dtype(dtype).name, steps=steps,
                min_time=min_time, seed=seed)
    code = ("import json, sys; from jaxnets import bench; a = json.loads(sys.argv[1]); "
            "print('JAXNETS-BENCH-ROW ' + json.dumps(bench._jax_case(a.pop('name'), a.pop('mode'), a.pop('what'), "
            "a.pop('batch_size'), a.pop('dtype'), **a)))")
    env = backend.child_environment("xla")  # not the XLA_FLAGS this process was given by jaxnets
    done = subprocess.run([sys.executable, "-c", code, json.dumps(args)], env=env, capture_output=True, text=True,
                          check=False)
    rows = [line for line in done.stdout.splitlines() if line.startswith("JAXNETS-BENCH-ROW ")]
    if done.returncode or not rows:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"child process failed (exit {done.returncode}): {tail[0][:200]}")
    return json.loads(rows[-1].split(" ", 1)[1])


# ----------------------------------------------------------------- PyTorch

def _torch_case(name: str, mode: str, what: str, batch_size: int, dtype, *, steps, min_time, seed: int = 0) -> dict:
    import torch  # noqa: PLC0415
    from torch.utils.flop_counter import FlopCounterMode  # noqa: PLC0415

    from jaxnets.interop import torch_models  # noqa: PLC0415

    torch.manual_seed(seed)
    torch_dtype = {jnp.dtype("float32"): torch.float32, jnp.dtype("bfloat16"): torch.bfloat16}[jnp.dtype(dtype)]
    net = torch_models.create(name, **BENCH_KWARGS.get(name, {})).to(torch_dtype)
    flax_model = models.create(name, **BENCH_KWARGS.get(name, {}))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch_size, *flax_model.input_shape)).astype(np.float32)
    x = torch.from_numpy(x if x.ndim == 2 else x.transpose(0, 3, 1, 2).copy()).to(torch_dtype)
    y = torch.from_numpy(rng.integers(0, 10, batch_size)).long()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    runner = torch.compile(net) if mode == "torch-compile" else net

    if what == "train":
        net.train()

        def step():
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(runner(x).float(), y)
            loss.backward()
            opt.step()
    else:
        net.eval()

        def step():
            with torch.no_grad():
                runner(x)

    counter = FlopCounterMode(display=False)
    with counter:  # count on the uncompiled net: the same model FLOPs
        if what == "train":
            torch.nn.functional.cross_entropy(net(x).float(), y).backward()
        else:
            with torch.no_grad():
                net(x)
    opt.zero_grad(set_to_none=True)
    first = _timed(step)
    timing = _measure(step, steps=steps, min_time=min_time)
    peak = int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None
    return {"compile_s": first, "first_step_s": first, "flops_per_step": float(counter.get_total_flops()),
            "trace_s": None,
            "compilations": None, "peak_memory_bytes": peak, **timing}


# ----------------------------------------------------------------- public API

def run(model_names: Sequence[str] = ("mlp", "lenet", "resnet18", "vgg16"), modes: Sequence[str] = MODES,
        batch_size: int = 128, steps: int | None = None, min_time: float | None = 2.0, dtype: str = "float32",
        what: str = "train", log: Callable[[str], None] | None = print) -> list[dict]:
    """Benchmark every model x mode, one framework and one case at a time.

    Args:
      model_names: `jaxnets.models` names.
      modes: from `MODES`; torch modes are skipped (with a note) without torch.
      batch_size: images per step.
      steps: timed steps per case (split into 5 segments); or None to use
      min_time: seconds of timed steps per case.
      dtype: 'float32' or 'bfloat16' (compute dtype).
      what: 'train' (forward + backward + SGD update) or 'infer' (forward).

    Returns:
      one dict per case (see the module docstring); skipped cases carry a
      'skipped' reason.
    """
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown mode(s) {unknown}; choose from {MODES}")
    if what not in WHAT:
        raise ValueError(f"what must be one of {WHAT}; got {what!r}")
    for name in model_names:
        models.create(name)  # raises a clear error for unknown names
    peak = peak_gflops()
    rows = []
    for name in model_names:
        for mode in modes:
            row = {"model": name, "mode": mode, "what": what, "batch_size": batch_size, "dtype": dtype}
            if mode in TORCH_MODES and not torch_available():
                row["skipped"] = "torch is not installed (pip install 'jaxnets[torch]')"
            else:
                try:
                    kwargs = dict(steps=steps, min_time=min_time)
                    if mode == XLA_DEFAULT_MODE:
                        row.update(_xla_default_case(name, what, batch_size, jnp.dtype(dtype), **kwargs))
                    else:
                        case = _torch_case if mode in TORCH_MODES else _jax_case
                        row.update(case(name, mode, what, batch_size, jnp.dtype(dtype), **kwargs))
                except Exception as err:  # report and continue: one broken backend must not hide the rest
                    row["skipped"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
            if "step_s_median" in row:
                row["images_per_s"] = batch_size / row["step_s_median"]
                if row.get("flops_per_step"):
                    row["gflops_per_s"] = row["flops_per_step"] / row["step_s_median"] / 1e9
                    row["pct_of_peak"] = 100 * row["gflops_per_s"] / peak
            rows.append(row)
            if log:
                log(_format_row(row))
    return rows


def numerics(model_name: str, k: int = 3, batch_size: int = 16, seed: int = 0) -> dict:
    """Loss and parameters after `k` train steps, eager vs jit, from the same seed and batches."""
    model = models.create(model_name, **BENCH_KWARGS.get(model_name, {}))
    batches = [_batch(model, batch_size, jnp.float32, seed + i) for i in range(k)]
    out = {}
    for mode in JAX_MODES:
        state = TrainState.create(model, optimizers.sgd(0.001, momentum=0.9, weight_decay=5e-4), seed=seed)
        steps = make_steps(mode=mode)
        for batch in batches:
            state, metrics = steps.train(state, batch)
        out[mode] = (float(metrics["loss_sum"] / metrics["count"]), state.params)
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(out["eager"][1]),
                                                               jax.tree.leaves(out["jit"][1])))
    return {"model": model_name, "steps": k, "loss_eager": out["eager"][0], "loss_jit": out["jit"][0],
            "loss_abs_diff": abs(out["eager"][0] - out["jit"][0]), "params_max_abs_diff": diff}


def vary_batch(model_name: str = "lenet", batch_sizes: Sequence[int] = (32, 64, 32, 48), seed: int = 0) -> list[dict]:
    """The static graph's price: each new batch shape recompiles the jitted step.

    Returns one row per (mode, call): the batch size, whether it is new, the
    XLA compilations the call triggered and its wall time. The eager path also
    compiles small per-op kernels for unseen shapes, but never the whole step.
    """
    model = models.create(model_name, **BENCH_KWARGS.get(model_name, {}))
    counter = _compile_counter()
    rows = []
    for mode in JAX_MODES:
        steps = make_steps(mode=mode)
        state = TrainState.create(model, optimizers.sgd(0.01), seed=seed)
        seen = set()
        for size in batch_sizes:
            batch = _batch(model, size, jnp.float32, seed)
            with counter.counting():
                start = time.perf_counter()
                state, metrics = steps.train(state, batch)  # thread the state: jit donates the old one
                jax.block_until_ready(metrics)
                seconds = time.perf_counter() - start
            rows.append({"mode": mode, "batch_size": size, "new_shape": size not in seen,
                         "compilations": counter.count, "compile_s": counter.seconds, "seconds": seconds})
            seen.add(size)
    return rows


def _format_row(row: dict) -> str:
    head = f"{row['model']:>9} {row['mode']:>13} {row['what']:>5} b{row['batch_size']:<4}"
    if "skipped" in row:
        return f"{head} skipped: {row['skipped']}"
    return (f"{head} compile/first {row['compile_s']:8.2f}s  step {1e3 * row['step_s_median']:9.2f}ms "
            f"[{1e3 * row['step_s_min']:.2f}-{1e3 * row['step_s_max']:.2f}]  {row['images_per_s']:10,.0f} img/s  "
            f"{row.get('gflops_per_s', float('nan')):7.1f} GFLOP/s ({row.get('pct_of_peak', float('nan')):4.1f}% peak)  "
            f"cpu {100 * row['cpu_util']:.0f}%")


def table(rows: list[dict]) -> str:
    """A markdown table of `run`'s rows with jit/eager and jaxnets/best-torch ratios per model."""
    lines = ["| model | what | batch | mode | compile / first step (s) | step (ms) median [min-max] | img/s | "
             "GFLOP/s | % peak | CPU util | compiles |",
             "|---|---|---:|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['model']} | {r['what']} | {r['batch_size']} | {r['mode']} | skipped: {r['skipped']} "
                         "| | | | | | |")
            continue
        lines.append(
            f"| {r['model']} | {r['what']} | {r['batch_size']} | {r['mode']} | {r['compile_s']:.2f} | "
            f"{1e3 * r['step_s_median']:.2f} [{1e3 * r['step_s_min']:.2f}-{1e3 * r['step_s_max']:.2f}] | "
            f"{r['images_per_s']:,.0f} | {r.get('gflops_per_s', 0):.1f} | {r.get('pct_of_peak', 0):.1f} | "
            f"{100 * r['cpu_util']:.0f}% | {r['compilations'] if r['compilations'] is not None else '-'} |")
    return "\n".join(lines)


def ratios(rows: list[dict]) -> list[dict]:
    """Per (model, what, batch): jit/eager speedup and jaxnets-jit / best-torch throughput."""
    out = []
    keys = sorted({(r["model"], r["what"], r["batch_size"]) for r in rows}, key=str)
    for key in keys:
        ips = {r["mode"]: r["images_per_s"] for r in rows if (r["model"], r["what"], r["batch_size"]) == key
               and "images_per_s" in r}
        torch_best = max((v for m, v in ips.items() if m in TORCH_MODES), default=None)
        out.append({"model": key[0], "what": key[1], "batch_size": key[2],
                    "jit_over_eager": ips["jit"] / ips["eager"] if "jit" in ips and "eager" in ips else None,
                    "jit_over_xla_default": (ips["jit"] / ips[XLA_DEFAULT_MODE]
                                             if "jit" in ips and XLA_DEFAULT_MODE in ips else None),
                    "jit_over_best_torch": ips["jit"] / torch_best if "jit" in ips and torch_best else None})
    return out


def print_table(rows: list[dict]) -> None:
    print(table(rows))
    for r in ratios(rows):
        parts = [f"{r['model']} {r['what']} b{r['batch_size']}:"]
        if r["jit_over_eager"] is not None:
            parts.append(f"jit/eager {r['jit_over_eager']:.1f}x")
        if r["jit_over_xla_default"] is not None:
            parts.append(f"jit/jit-xla {r['jit_over_xla_default']:.2f}x")
        if r["jit_over_best_torch"] is not None:
            parts.append(f"jaxnets-jit/best-torch {r['jit_over_best_torch']:.2f}x")
        print("  ".join(parts))


def plot(rows: list[dict], path: str) -> str:
    """Bar chart of images/s per model and mode (log scale)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # noqa: PLC0415

    done = [r for r in rows if "images_per_s" in r]
    groups = list(dict.fromkeys((r["model"], r["what"], r["batch_size"]) for r in done))
    modes = list(dict.fromkeys(r["mode"] for r in done))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4))
    width = 0.8 / max(1, len(modes))
    for i, mode in enumerate(modes):
        values = [next((r["images_per_s"] for r in done if (r["model"], r["what"], r["batch_size"]) == g
                        and r["mode"] == mode), 0) for g in groups]
        ax.bar(np.arange(len(groups)) + i * width, values, width, label=mode)
    ax.set_xticks(np.arange(len(groups)) + width * (len(modes) - 1) / 2)
    ax.set_xticklabels([f"{m}\n{w} b{b}" for m, w, b in groups])
    ax.set_yscale("log")
    ax.set_ylabel("images / second (log)")
    ax.set_title("eager vs jit vs PyTorch")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["MODES", "XLA_DEFAULT_MODE", "CompileCounter", "machine", "numerics", "peak_gflops", "plot", "print_table", "ratios", "run",
           "table", "torch_available", "vary_batch"]
