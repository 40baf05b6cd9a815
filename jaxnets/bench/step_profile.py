"""Where one compiled train step's time goes, by kind of XLA operation (JAX's profiler, one run).

    python -m jaxnets.bench.step_profile --model resnet18 --batch-size 32 --dtype bfloat16

Compiles the benchmark's train step (`jaxnets.bench.cases`: the same model,
batch and SGD as `jaxnets-bench`, through `backend.jit`, so the CPU
convolution library is the one `backend.conv_library` picks), runs it a few
times, then records `--steps` steps with `jax.profiler` and sums the time of
every operation the XLA:CPU runtime reports, grouped by kind: oneDNN
convolutions, XLA's own convolutions, layout copies (`transpose_copy_fusion`:
the activations XLA transposes for weight-gradient convolutions), YNNPACK
fusions (reductions, dots) and each other fusion by the name XLA gives it.

What the runtime does not report as an operation is the `unattributed` line:
the step's wall time minus the operations' sum. XLA's Eigen convolutions
run in their own thread pool and show up there, not as operations, so a
float32 step on the Eigen path has most of its convolution time in that line.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import sys
import tempfile
import time

import jax

from jaxnets import backend, report
from jaxnets.bench import cases, host

# Events of the runtime itself (not operations), skipped when summing.
_NOT_OPERATIONS = ("ThunkExecutor", "$", "Pjit", "CommonPjRt", "Slinky", "ParseArguments", "Handle input",
                   "AllocateOutput", "PythonRefManager", "end: ")


def kind_of(event_name: str) -> str | None:
    """The kind an XLA:CPU profiler event belongs to, or None for the runtime's own events.

    `custom-call.3.clone__onednn$convolution` -> `onednn convolution`;
    `transpose_copy_fusion.58` -> `transpose_copy_fusion`; `convolution-base-dilated.1`
    -> `convolution-base-dilated`.
    """
    if event_name.startswith(_NOT_OPERATIONS):
        return None
    if "onednn$convolution" in event_name:
        return "onednn convolution"
    return re.sub(r"[._]\d+.*$", "", event_name.replace(".clone", ""))


def summarize(events: list[dict], steps: int) -> dict[str, dict[str, float]]:
    """`{kind: {"ms_per_step", "calls_per_step"}}` from Chrome-trace complete events (`ph == 'X'`, `dur` in us)."""
    total: dict[str, float] = collections.Counter()
    calls: dict[str, int] = collections.Counter()
    for event in events:
        if event.get("ph") != "X":
            continue
        kind = kind_of(str(event.get("name", "")))
        if kind is None:
            continue
        total[kind] += float(event.get("dur", 0.0))
        calls[kind] += 1
    return {k: {"ms_per_step": total[k] / steps / 1e3, "calls_per_step": calls[k] / steps}
            for k in sorted(total, key=total.get, reverse=True)}


def _read_trace(folder: str) -> list[dict]:
    paths = sorted(glob.glob(f"{folder}/**/*.trace.json.gz", recursive=True))
    if not paths:
        raise RuntimeError(f"jax.profiler wrote no *.trace.json.gz under {folder}")
    with gzip.open(paths[-1]) as f:
        trace = json.load(f)
    return trace["traceEvents"] if isinstance(trace, dict) else trace


def run(model_name: str, batch_size: int = 32, dtype: str = "float32", steps: int = 3, warmup: int = 2) -> dict:
    """Profile `steps` train steps of `model_name`; returns the kinds, the step's wall time and the sum."""
    _, state, batch = cases.case_inputs(cases.Case(model=model_name, what="train", batch_size=batch_size,
                                                   dtype=dtype, seed=0))
    step = backend.jit(cases.train_step(), dtype=dtype, donate_argnums=0).lower(state, batch).compile()
    for _ in range(warmup):
        state, _ = step(state, batch)
    jax.block_until_ready(state)
    with tempfile.TemporaryDirectory(prefix="jaxnets-profile-") as folder:
        jax.profiler.start_trace(folder, create_perfetto_trace=True)
        start = time.perf_counter()
        for _ in range(steps):
            state, _ = step(state, batch)
            jax.block_until_ready(state)
        wall_ms = (time.perf_counter() - start) / steps * 1e3
        jax.profiler.stop_trace()
        kinds = summarize(_read_trace(folder), steps)
    attributed = sum(k["ms_per_step"] for k in kinds.values())
    return {"model": model_name, "batch_size": batch_size, "dtype": dtype, "steps": steps,
            "conv_library": backend.conv_library(dtype), "step_ms": wall_ms, "attributed_ms": attributed,
            "kinds": kinds}


def table(result: dict, top: int = 15) -> str:
    """Markdown: the `top` kinds by time, the rest folded into one line, then `unattributed` and the step."""
    step = result["step_ms"]
    rows = list(result["kinds"].items())
    cells = [[kind, f"{v['ms_per_step']:.1f}", f"{v['calls_per_step']:.0f}", f"{v['ms_per_step'] / step:.0%}"]
             for kind, v in rows[:top]]
    rest = sum(v["ms_per_step"] for _, v in rows[top:])
    if rest:
        cells.append([f"{len(rows) - top} other kinds", f"{rest:.1f}", "", f"{rest / step:.0%}"])
    unattributed = max(step - result["attributed_ms"], 0.0)
    cells.append(["unattributed (Eigen convolutions, waits)", f"{unattributed:.1f}", "", f"{unattributed / step:.0%}"])
    cells.append(["**step (wall, under the profiler)**", f"**{step:.1f}**", "", "100%"])
    return report.markdown_table(["kind", "ms / step", "calls / step", "share"], cells, "lrrr")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxnets.bench.step_profile", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    result = run(args.model, args.batch_size, args.dtype, args.steps)
    print(f"{args.model} train step, batch {args.batch_size}, {args.dtype}; convolutions: {result['conv_library']}; "
          f"{host.machine()['cpu']}")
    print(table(result))
    if args.json:
        report.write_json(args.json, {"machine": host.machine(), "backend": backend.describe(), **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
