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

jaxnets' own oneDNN calls (XLA names each `ffi_call.N`) are grouped by their
custom-call target, read from the compiled program: `jaxnets_onednn_convolution`,
`jaxnets_onednn_batch_norm_forward`, and so on.

What the runtime does not report as an operation is the `unattributed` line:
the step's wall time minus the operations' sum. XLA's Eigen convolutions
run in their own thread pool and show up there, not as operations, so a
float32 step on the Eigen path has most of its convolution time in that line.
The operations' sum can also exceed the step: XLA runs independent
operations side by side, and a oneDNN call waiting for its turn at the
handlers' one-at-a-time lock (`common.h`) is timed from its start.

Where the step-to-step spread goes: each operation runs once per step, so
its fastest run over the recorded steps is what it costs undisturbed. The
`fastest` column sums those minima per kind, and `over fastest` is what the
kind took on average beyond them: the time lost to waits (a thread of an
OpenMP team descheduled, a core lent to another process) rather than to
work. Record more steps (`--steps 12`) to see it.
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
                   "AllocateOutput", "PythonRefManager", "end: ", "Wait for ", "ThreadpoolListener")


def custom_call_targets(hlo_text: str) -> dict[str, str]:
    """`{instruction name: custom_call_target}` of the custom calls in a compiled program's HLO text.

    `%ffi_call.245 = (...) custom-call(...), custom_call_target="jaxnets_onednn_batch_norm_forward", ...`
    -> `{"ffi_call.245": "jaxnets_onednn_batch_norm_forward"}`.
    """
    return dict(re.findall(r"%?([\w.\-]+) = [^\n]*?custom-call\([^\n]*?custom_call_target=\"([^\"]+)\"", hlo_text))


def kind_of(event_name: str, targets: dict[str, str] | None = None) -> str | None:
    """The kind an XLA:CPU profiler event belongs to, or None for the runtime's own events.

    `custom-call.3.clone__onednn$convolution` -> `onednn convolution`;
    `transpose_copy_fusion.58` -> `transpose_copy_fusion`; `convolution-base-dilated.1`
    -> `convolution-base-dilated`; a custom call named in `targets`
    (`custom_call_targets`) -> its target.
    """
    if event_name.startswith(_NOT_OPERATIONS):
        return None
    if targets and event_name in targets:
        return targets[event_name]
    if "onednn$convolution" in event_name:
        return "onednn convolution"
    return re.sub(r"[._]\d+.*$", "", event_name.replace(".clone", ""))


def summarize(events: list[dict], steps: int, targets: dict[str, str] | None = None) -> dict[str, dict[str, float]]:
    """Per kind of operation: `{"ms_per_step", "calls_per_step", "fastest_ms", "over_fastest_ms"}`, largest first.

    From Chrome-trace complete events (`ph == 'X'`, `dur` in us) of `steps`
    steps of one program. `fastest_ms` sums each operation's (event name's)
    fastest run, `over_fastest_ms` its mean time beyond that per step: how
    much of the kind's time the slower steps added.
    """
    durations: dict[str, list[float]] = collections.defaultdict(list)
    kind_of_name: dict[str, str] = {}
    for event in events:
        if event.get("ph") != "X":
            continue
        name = str(event.get("name", ""))
        kind = kind_of(name, targets)
        if kind is None:
            continue
        durations[name].append(float(event.get("dur", 0.0)))
        kind_of_name[name] = kind
    total: dict[str, float] = collections.Counter()
    calls: dict[str, int] = collections.Counter()
    fastest: dict[str, float] = collections.Counter()
    for name, runs in durations.items():
        kind = kind_of_name[name]
        total[kind] += sum(runs)
        calls[kind] += len(runs)
        fastest[kind] += min(runs) * len(runs) / steps  # an operation run k times a step counts its minimum k times
    return {k: {"ms_per_step": total[k] / steps / 1e3, "calls_per_step": calls[k] / steps,
                "fastest_ms": fastest[k] / 1e3, "over_fastest_ms": (total[k] / steps - fastest[k]) / 1e3}
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
        kinds = summarize(_read_trace(folder), steps, custom_call_targets(step.as_text()))
    attributed = sum(k["ms_per_step"] for k in kinds.values())
    return {"model": model_name, "batch_size": batch_size, "dtype": dtype, "steps": steps,
            "conv_library": backend.conv_library(dtype), "step_ms": wall_ms, "attributed_ms": attributed,
            "kinds": kinds}


def table(result: dict, top: int = 15) -> str:
    """Markdown: the `top` kinds by time, the rest folded into one line, then `unattributed` and the step."""
    step = result["step_ms"]
    rows = list(result["kinds"].items())
    cells = [[kind, f"{v['ms_per_step']:.1f}", f"{v['calls_per_step']:.0f}", f"{v['ms_per_step'] / step:.0%}",
              f"{v['fastest_ms']:.1f}", f"{v['over_fastest_ms']:.1f}"] for kind, v in rows[:top]]
    rest = {key: sum(v[key] for _, v in rows[top:]) for key in ("ms_per_step", "fastest_ms", "over_fastest_ms")}
    if rows[top:]:
        cells.append([f"{len(rows) - top} other kinds", f"{rest['ms_per_step']:.1f}", "",
                      f"{rest['ms_per_step'] / step:.0%}", f"{rest['fastest_ms']:.1f}",
                      f"{rest['over_fastest_ms']:.1f}"])
    unattributed = max(step - result["attributed_ms"], 0.0)
    cells.append(["unattributed (Eigen convolutions, waits)", f"{unattributed:.1f}", "", f"{unattributed / step:.0%}",
                  "", ""])
    cells.append(["**step (wall, under the profiler)**", f"**{step:.1f}**", "", "100%", "", ""])
    return report.markdown_table(["kind", "ms / step", "calls / step", "share", "fastest (ms)", "over fastest (ms)"],
                                 cells, "lrrrrr")


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
