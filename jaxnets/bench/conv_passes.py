"""Pass by pass: each convolution's forward, input gradient and weight gradient, XLA's Eigen vs jaxnets' oneDNN.

    python -m jaxnets.bench.conv_passes --model resnet18 --batch-size 32 --rounds 3

`jaxnets.bench.conv_layers` times a layer's whole training work (forward and
both gradients in one program); a CPU rule may want to know which library
wins which pass. For every distinct convolution of `--model` (read from the
model: `conv_layers.model_convolutions`, with its count), each pass is one
jitted program in each library: `lax.conv_general_dilated` and its
autodiff transposes as XLA compiles them (Eigen on the CPU, with whatever
layout copies XLA adds around the gradients), and the matching call of
jaxnets' oneDNN handler (`jaxnets.onednn.convolution`). The two libraries'
results are compared first; a disagreement stops the run (a fast wrong
answer is no answer). Times are the minimum over `--rounds`, the libraries
alternated within each round. Sums over passes measured one at a time need
not add up to a train step: BENCHMARKS.md "issue 24 round 7" shows a mix
that won pass by pass and lost inside the step (`bench.interleaved`
decides).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnets import backend, onednn, report
from jaxnets.bench import conv_layers, host
from jaxnets.onednn import convolution as handler

PASSES = ("forward", "input_grad", "weight_grad")
LIBRARIES = ("eigen", "onednn")
TOLERANCE = 1e-3  # largest |difference| / largest |value| accepted between the two libraries (float32)


def pass_programs(x: jax.Array, kernel: jax.Array, grad: jax.Array, strides: tuple[int, int],
                  padding: tuple[tuple[int, int], tuple[int, int]]) -> dict[str, dict[str, Callable[[], jax.Array]]]:
    """`{pass: {library: call}}`: each pass of one convolution, jitted, in XLA's Eigen and in jaxnets' handler.

    `x` `[N, H, W, C]`, `kernel` `[kh, kw, C, O]`, `grad` `[N, Ho, Wo, O]` (the output's gradient), one dtype.
    Every call runs its program once on these operands and returns the result (ready).
    """
    def lax_conv(x, kernel):
        return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=conv_layers.DIMS)

    threads = handler.threads(kernel.shape, grad.shape)
    jits = {
        "forward": {"eigen": jax.jit(lax_conv),
                    "onednn": jax.jit(lambda x, kernel: handler._call(handler.FORWARD, x, kernel, grad.shape, strides,
                                                                      padding, threads))},
        "input_grad": {"eigen": jax.jit(lambda x, kernel, grad: jax.vjp(lambda x: lax_conv(x, kernel), x)[1](grad)[0]),
                       "onednn": jax.jit(lambda x, kernel, grad: handler._call(
                           handler.BACKWARD_DATA, grad, kernel, x.shape, strides, padding, threads))},
        "weight_grad": {"eigen": jax.jit(lambda x, kernel, grad: jax.vjp(lambda k: lax_conv(x, k), kernel)[1](grad)[0]),
                        "onednn": jax.jit(lambda x, kernel, grad: handler._call(
                            handler.BACKWARD_WEIGHTS, x, grad, kernel.shape, strides, padding, threads))},
    }
    args = {"forward": (x, kernel), "input_grad": (x, kernel, grad), "weight_grad": (x, kernel, grad)}
    return {p: {lib: (lambda f=f, a=args[p]: jax.block_until_ready(f(*a))) for lib, f in libs.items()}
            for p, libs in jits.items()}


def check_agreement(name: str, programs: dict[str, dict[str, Callable[[], jax.Array]]]) -> None:
    """Raise `RuntimeError` when a pass's two libraries disagree by more than `TOLERANCE` (relative to its scale)."""
    for pass_name, libs in programs.items():
        eigen, onednn_result = (np.asarray(libs[lib](), np.float32) for lib in LIBRARIES)
        scale = max(float(np.max(np.abs(eigen))), 1e-30)
        error = float(np.max(np.abs(eigen - onednn_result))) / scale
        if not error <= TOLERANCE:
            raise RuntimeError(f"{name}: the {pass_name} of XLA's Eigen and jaxnets' oneDNN handler differ by "
                               f"{error:.2e} of its scale (> {TOLERANCE}): a library computes it wrongly here; "
                               "timing it would compare a wrong answer")


def run(model: str, batch_size: int = 32, rounds: int = 3, log: Callable[[str], None] | None = print) -> list[dict]:
    """Time every pass of every distinct float32 convolution of `model` in both libraries; one dict per layer.

    Keys: `layer`, `count`, `<pass>_<library>_ms` (minimum over `rounds`) for each of `PASSES` x `LIBRARIES`.

    Raises:
      RuntimeError: jaxnets' oneDNN handler is not available here (`backend.onednn_handler_problem`), or a pass
        disagrees between the libraries (`check_agreement`).
    """
    problem = backend.onednn_handler_problem()
    if problem is not None:
        raise RuntimeError(f"jaxnets' oneDNN handler is not available here ({problem}): nothing to compare")
    rows = []
    for spec in conv_layers.model_convolutions(model, batch_size):
        name, height, width, channels, out, k, stride, pad, _, count = spec
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.normal(size=(batch_size, height, width, channels)), jnp.float32)
        kernel = jnp.asarray(rng.normal(size=(k, k, channels, out)) / np.sqrt(k * k * channels), jnp.float32)
        strides, padding = (stride, stride), ((pad, pad), (pad, pad))
        if k == 1 and stride > 1 and pad == 0:
            # A strided 1x1 convolution is a 1x1 convolution of every stride-th pixel: what `onednn.conv` runs
            # (oneDNN 3.2's strided 1x1 weight gradient is broken on thin inputs); both libraries get that form.
            x, strides = x[:, ::stride, ::stride, :], (1, 1)
        if not onednn.supports(x.shape, kernel.shape, x.dtype, padding):
            continue
        shape = handler.output_shape(x.shape, kernel.shape, strides, padding)
        grad = jnp.asarray(rng.normal(size=shape), jnp.float32)
        programs = pass_programs(x, kernel, grad, strides, padding)
        check_agreement(name, programs)  # also the warm-up call of every program
        best = {(p, lib): float("inf") for p in PASSES for lib in LIBRARIES}
        for _ in range(rounds):
            for p in PASSES:
                for lib in LIBRARIES:
                    start = time.perf_counter()
                    programs[p][lib]()
                    best[p, lib] = min(best[p, lib], time.perf_counter() - start)
        row = {"layer": name, "count": count, **{f"{p}_{lib}_ms": 1e3 * s for (p, lib), s in best.items()}}
        rows.append(row)
        if log:
            log(f"{name} x{count}: " + ", ".join(f"{p} {row[f'{p}_eigen_ms']:.1f} / {row[f'{p}_onednn_ms']:.1f}"
                                                for p in PASSES) + " ms (Eigen / oneDNN)")
    return rows


def totals(rows: list[dict]) -> dict[str, float]:
    """Milliseconds per train step (time x count, summed over layers) of each `<pass>_<library>`, and `best_ms`:
    every pass in whichever library was faster for it."""
    out = {f"{p}_{lib}": sum(r[f"{p}_{lib}_ms"] * r["count"] for r in rows) for p in PASSES for lib in LIBRARIES}
    out["best"] = sum(min(r[f"{p}_{lib}_ms"] for lib in LIBRARIES) * r["count"] for r in rows for p in PASSES)
    return out


def table(rows: list[dict]) -> str:
    """Markdown: per layer, each pass's Eigen / oneDNN milliseconds (the faster in bold); per-step totals last."""
    def pair(eigen: float, onednn_ms: float, digits: int = 1) -> str:
        a, b = f"{eigen:,.{digits}f}", f"{onednn_ms:,.{digits}f}"
        return f"**{a}** / {b}" if eigen < onednn_ms else f"{a} / **{b}**"

    cells = [[r["layer"], str(r["count"])] + [pair(r[f"{p}_eigen_ms"], r[f"{p}_onednn_ms"]) for p in PASSES]
             for r in rows]
    sums = totals(rows)
    cells.append(["**per step** (x count)", str(sum(r["count"] for r in rows))]
                 + [pair(sums[f"{p}_eigen"], sums[f"{p}_onednn"], 0) for p in PASSES])
    return report.markdown_table(["layer", "count"] + [f"{p.replace('_', ' ')}: Eigen / oneDNN (ms)" for p in PASSES],
                                 cells, "lrrrr")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxnets.bench.conv_passes", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.rounds < 1 or args.batch_size < 1:
        p.error(f"--rounds and --batch-size must be >= 1 (got {args.rounds}, {args.batch_size})")
    try:
        rows = run(args.model, args.batch_size, args.rounds)
    except RuntimeError as error:
        print(f"conv_passes: {error}", file=sys.stderr)
        return 1
    sums = totals(rows)
    print(f"{args.model}, batch {args.batch_size}, float32; {host.machine()['cpu']}; CPU flags: "
          f"{backend.describe()['cpu_flags']}; min of {args.rounds} rounds")
    print(table(rows))
    print(f"every pass in its faster library: {sums['best']:,.0f} ms per step; all Eigen "
          f"{sum(sums[f'{q}_eigen'] for q in PASSES):,.0f}, all oneDNN {sum(sums[f'{q}_onednn'] for q in PASSES):,.0f}")
    if args.json:
        report.write_json(args.json, {"machine": host.machine(), "backend": backend.describe(), "model": args.model,
                                      "batch_size": args.batch_size, "rows": rows, "totals_ms": sums})
    return 0


if __name__ == "__main__":
    sys.exit(main())
