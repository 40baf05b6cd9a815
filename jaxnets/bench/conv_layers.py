"""Layer by layer: every distinct convolution of LeNet, ResNet-18 and VGG-16, JAX vs PyTorch, one run.

    python -m jaxnets.bench.conv_layers --batch-size 128 --json conv-layers.json
    python -m jaxnets.bench.conv_layers --model resnet18 --batch-size 128   # one model's, weighted by count
    python -m jaxnets.bench.conv_layers --model resnet18 --dtype bfloat16    # bfloat16 (PyTorch too)

With `--model`, the layers are read from the model itself (the convolutions
in the jaxpr of its forward pass, grouped by shape and counted) and the
table adds each layer's share of one training step (time x count) and the
sum over all convolutions, to set beside the whole step's time from
`jaxnets-bench`: what is left over is everything else (BatchNorm, ReLU,
pooling, the optimizer).

For each distinct convolution shape of the CIFAR ResNet-18 and VGG-16 it
times the training work of that layer — forward, input gradient (not for
the stem, whose input is data) and weight gradient — as one jitted JAX
program through `jaxnets.convolution` (what the models run: `convolution.conv_algorithm`
picks the lowering), the same as XLA's own convolution (`lax`), as im2col
(`convolution.im2col_conv`: kh*kw shifted slices + one matmul), handed to
oneDNN by XLA (where this jaxlib does that: `backend.onednn_lowers_convolutions`),
jaxnets' own oneDNN handler (`jaxnets.onednn.conv`, wherever it builds here,
whether or not `backend.CONV_RULES` picks it on this CPU: the column that
decides a rule), and PyTorch's `conv2d` forward + backward, all in `--dtype`. Times
are the minimum over rounds with the variants alternated (each timed call
right after an untimed one), so a noisy neighbour hurts every variant alike.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnets import backend, convolution, onednn, report
from jaxnets.bench import host

# (name, H, W, C, O, kernel, stride, padding, models that have it)
LAYERS = (
    ("lenet conv1 1->6 k3 @28", 28, 28, 1, 6, 3, 1, 1, "lenet"),
    ("lenet conv2 6->16 k3 @14", 14, 14, 6, 16, 3, 1, 1, "lenet"),
    ("lenet5 conv1 3->6 k5 @32", 32, 32, 3, 6, 5, 1, 0, "lenet5"),
    ("lenet5 conv2 6->16 k5 @14", 14, 14, 6, 16, 5, 1, 0, "lenet5"),
    ("stem 3->64 k3", 32, 32, 3, 64, 3, 1, 1, "resnet18, vgg16"),
    ("3x3 64->64 @32", 32, 32, 64, 64, 3, 1, 1, "resnet18, vgg16"),
    ("3x3 s2 64->128 @32", 32, 32, 64, 128, 3, 2, 1, "resnet18"),
    ("1x1 s2 64->128 @32", 32, 32, 64, 128, 1, 2, 0, "resnet18"),
    ("3x3 128->128 @16", 16, 16, 128, 128, 3, 1, 1, "resnet18, vgg16"),
    ("3x3 s2 128->256 @16", 16, 16, 128, 256, 3, 2, 1, "resnet18"),
    ("3x3 256->256 @8", 8, 8, 256, 256, 3, 1, 1, "resnet18, vgg16"),
    ("3x3 s2 256->512 @8", 8, 8, 256, 512, 3, 2, 1, "resnet18"),
    ("3x3 512->512 @4", 4, 4, 512, 512, 3, 1, 1, "resnet18, vgg16"),
    ("3x3 512->512 @2", 2, 2, 512, 512, 3, 1, 1, "vgg16"),
    ("1x1 s2 128->256 @16", 16, 16, 128, 256, 1, 2, 0, "resnet18"),
    ("1x1 s2 256->512 @8", 8, 8, 256, 512, 1, 2, 0, "resnet18"),
)
DIMS = ("NHWC", "HWIO", "NHWC")


def im2col_conv(x: jax.Array, kernel: jax.Array, stride: int, pad: int) -> jax.Array:
    """`convolution.im2col_conv` with one stride and one padding for both axes (what this table varies)."""
    return convolution.im2col_conv(x, kernel, (stride, stride), ((pad, pad), (pad, pad)))


def _sub_jaxprs(eqn) -> list:
    """The jaxprs nested in an equation's parameters (jit, custom_vjp, scan, cond bodies)."""
    out = []
    for value in eqn.params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, jax.extend.core.ClosedJaxpr):
                out.append(item.jaxpr)
            elif isinstance(item, jax.extend.core.Jaxpr):
                out.append(item)
    return out


def model_convolutions(name: str, batch_size: int = 128) -> list[tuple]:
    """The distinct convolutions of `name`'s forward pass, as `LAYERS` rows with a count appended.

    Read from the jaxpr of `model.apply` in train mode (what a training step
    runs), traced with jaxnets' CPU lowerings switched off so that every
    convolution shows as one (im2col and small-map matmuls included), so the
    shapes and counts are the model's own. Returns
    `(name, H, W, C, O, kernel, stride, padding, model, count)` tuples in
    order of first appearance.
    """
    from jaxnets import models

    model = models.create(name)
    variables = jax.eval_shape(lambda: models.init(model, jax.random.key(0)))
    x = jax.ShapeDtypeStruct((batch_size, *model.input_shape), jnp.float32)
    with backend.portable():  # `convolution.conv_algorithm` picks `lax` for every convolution here
        closed = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"],
                                                          rngs={"dropout": jax.random.key(0)}))(variables, x)
    counts: dict[tuple, int] = {}

    def walk(jaxpr) -> None:
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
                spec = eqn.params["dimension_numbers"]
                n, c, h, w = (lhs[i] for i in spec.lhs_spec)
                o, i_, kh, kw = (rhs[i] for i in spec.rhs_spec)
                (pad, _), _ = eqn.params["padding"]
                key = (h, w, c, o, kh, eqn.params["window_strides"][0], pad)
                counts[key] = counts.get(key, 0) + 1
            for sub in _sub_jaxprs(eqn):
                walk(sub)

    walk(closed.jaxpr)
    rows = []
    for (h, w, c, o, k, stride, pad), count in counts.items():
        label = f"{k}x{k}{f' s{stride}' if stride > 1 else ''} {c}->{o} @{h}"
        rows.append((label, h, w, c, o, k, stride, pad, name, count))
    return rows


def _jax_layer(conv: Callable, x, w, stem: bool, planned: bool = False, options=None) -> Callable[[], None]:
    """Forward + gradients of `conv`, jitted: with `backend.jit` (the library `backend.conv_library` picks for
    this dtype) when `planned`, else `jax.jit` with these compiler `options` (none: XLA's own convolution)."""
    def loss(x, w):
        return jnp.sum(conv(x, w).astype(jnp.float32) ** 2)

    fun = jax.grad(loss, argnums=(1,) if stem else (0, 1))
    grad = backend.jit(fun, dtype=x.dtype) if planned else jax.jit(fun, compiler_options=options)
    jax.block_until_ready(grad(x, w))
    return lambda: jax.block_until_ready(grad(x, w))


def _torch_layer(x_np, w_np, stride: int, pad: int, stem: bool, dtype: str = "float32") -> Callable[[], None]:
    import torch

    torch_dtype = getattr(torch, dtype)
    x = torch.from_numpy(x_np.transpose(0, 3, 1, 2).copy()).to(torch_dtype).requires_grad_(not stem)
    w = torch.from_numpy(w_np.transpose(3, 2, 0, 1).copy()).to(torch_dtype).requires_grad_(True)

    def step():
        w.grad = None
        if not stem:
            x.grad = None
        torch.nn.functional.conv2d(x, w, stride=stride, padding=pad).float().pow(2).sum().backward()

    step()
    return step


def run(batch_size: int = 128, rounds: int = 5, log=print, layer_specs=LAYERS, dtype: str = "float32") -> list[dict]:
    """Time every layer of `layer_specs` (default `LAYERS`) in each variant; one dict per layer (milliseconds).

    `dtype` is the compute dtype of every variant (PyTorch's included); `jaxnets`
    is what the models run (`convolution.conv_algorithm`, `backend.conv_library`),
    `lax` XLA's own convolution with no library choice.

    `layer_specs` rows may carry a count as a tenth field (`model_convolutions`);
    the dicts then have `count` and `<variant>_ms_per_step` (time x count).
    """
    have_torch = host.torch_available()
    rows = []
    for spec in layer_specs:
        name, height, width, channels, out, k, stride, pad, where = spec[:9]
        rng = np.random.default_rng(0)
        x_np = rng.normal(size=(batch_size, height, width, channels)).astype(np.float32)
        w_np = (rng.normal(size=(k, k, channels, out)) / np.sqrt(k * k * channels)).astype(np.float32)
        x, w = jnp.asarray(x_np, dtype), jnp.asarray(w_np, dtype)
        stem = channels in (1, 3)  # the first layer: its input is data, so no input gradient
        dims = lax.conv_dimension_numbers(x.shape, w.shape, DIMS)
        padding = ((pad, pad), (pad, pad))
        lax_conv = functools.partial(lax.conv_general_dilated, window_strides=(stride, stride), padding=padding,
                                     dimension_numbers=dims)
        variants = {
            "jaxnets": _jax_layer(functools.partial(convolution.conv_general_dilated, window_strides=(stride, stride),
                                                    padding=padding, dimension_numbers=dims), x, w, stem,
                                  planned=True),
            "lax": _jax_layer(lax_conv, x, w, stem),
            "im2col": _jax_layer(functools.partial(im2col_conv, stride=stride, pad=pad), x, w, stem),
        }
        if backend.onednn_lowers_convolutions(dtype):  # jax 0.12: XLA's convolution handed to oneDNN
            variants["onednn"] = _jax_layer(lax_conv, x, w, stem, options=backend.ONEDNN_OPTIONS)
        if (backend.onednn_handler_problem() is None and onednn.build.dtype_works(dtype)
                and onednn.supports(x.shape, w.shape, dtype, padding)):
            variants["handler"] = _jax_layer(functools.partial(onednn.conv, strides=(stride, stride), padding=padding),
                                             x, w, stem)
        if have_torch:
            variants["torch"] = _torch_layer(x_np, w_np, stride, pad, stem, dtype)
        best = {v: float("inf") for v in variants}
        for _ in range(rounds):
            for variant, step in variants.items():
                # One untimed call first: PyTorch's OpenMP threads keep spinning for a while after its step and
                # would slow whichever JAX variant came next (up to 1.8x on LeNet's few-millisecond layers).
                step()
                start = time.perf_counter()
                step()
                best[variant] = min(best[variant], time.perf_counter() - start)
        row = {"layer": name, "models": where, "batch_size": batch_size, "dtype": dtype,
               **{f"{v}_ms": 1e3 * s for v, s in best.items()}}
        if have_torch:
            row["jaxnets_over_torch"] = best["torch"] / best["jaxnets"]  # > 1: jaxnets faster
        row["im2col_speedup"] = best["lax"] / best["im2col"]  # > 1: im2col beats XLA's convolution
        if len(spec) > 9:
            row["count"] = spec[9]
            row.update({f"{v}_ms_per_step": 1e3 * s * spec[9] for v, s in best.items()})
        rows.append(row)
        if log:
            log(" | ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: one line per layer; with counts, each layer's time per step and a total line."""
    torch_col = "torch_ms" in rows[0]
    optional = [v for v in ("onednn", "handler") if all(f"{v}_ms" in r for r in rows)]
    counted = "count" in rows[0]
    names = {"jaxnets": "jaxnets", "lax": "lax", "onednn": "XLA's oneDNN", "handler": "oneDNN handler",
             "torch": "torch"}
    header = (["layer", "in", "jaxnets (ms)", "lax (ms)", "im2col (ms)"] + [f"{names[v]} (ms)" for v in optional]
              + (["torch (ms)", "torch / jaxnets"] if torch_col else []))
    cells = [[r["layer"], r["models"], f"{r['jaxnets_ms']:.1f}", f"{r['lax_ms']:.1f}", f"{r['im2col_ms']:.1f}"]
             + [f"{r[f'{v}_ms']:.1f}" for v in optional]
             + ([f"{r['torch_ms']:.1f}", f"{r['jaxnets_over_torch']:.2f}x"] if torch_col else []) for r in rows]
    align = "llrrr" + "r" * len(optional) + ("rr" if torch_col else "")
    if counted:
        per_step = [v for v in ("jaxnets", "lax", *optional, "torch") if f"{v}_ms_per_step" in rows[0]]
        header += ["count"] + [f"{names[v]} per step (ms)" for v in per_step]
        for cell, r in zip(cells, rows, strict=True):
            cell += [str(r["count"])] + [f"{r[f'{v}_ms_per_step']:.0f}" for v in per_step]
        totals = totals_per_step(rows)
        cells.append(["**all convolutions**"] + [""] * (len(header) - len(per_step) - 2)
                     + [str(sum(r["count"] for r in rows))] + [f"**{totals[v]:.0f}**" for v in per_step])
        align += "r" * (1 + len(per_step))
    return report.markdown_table(header, cells, align)


def totals_per_step(rows: list[dict]) -> dict[str, float]:
    """Milliseconds per training step spent in all the counted convolutions, per variant (those timed on every row)."""
    variants = [k[: -len("_ms_per_step")] for k in rows[0] if k.endswith("_ms_per_step") and all(k in r for r in rows)]
    return {v: sum(r[f"{v}_ms_per_step"] for r in rows) for v in variants}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxnets.bench.conv_layers", description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--model", default=None, help="only this model's convolutions, counted (e.g. resnet18)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    specs = LAYERS if args.model is None else model_convolutions(args.model, args.batch_size)
    rows = run(args.batch_size, args.rounds, layer_specs=specs, dtype=args.dtype)
    print(table(rows))
    if args.json:
        report.write_json(args.json, {"machine": host.machine(), "backend": backend.describe(), "model": args.model,
                                      "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
