"""A 2-D convolution whose forward pass and both gradients are oneDNN calls (XLA:CPU custom calls).

XLA:CPU's own convolutions are Eigen's; jax 0.12 can also hand bfloat16
forward-shaped convolutions to oneDNN, but not the gradients, and it
transposes every weight-gradient convolution's operands to make it look like
a forward one. Here the forward pass, the input gradient and the weight
gradient are oneDNN's three convolution primitives (forward, backward-data,
backward-weights), on NHWC activations and HWIO kernels as flax keeps them:
no layout passes in XLA. `conv` is a `jax.custom_vjp`, so `jax.grad` and
`jax.jit` use it like any other operation (`jax.vmap` runs it once per
element). CPU only; float32 and bfloat16.

Small convolutions (`SERIAL_MACS`) run on the calling XLA thread alone: an
OpenMP team's start and barrier cost more than such a call's work, and on a
busy machine the barrier can wait a whole scheduler tick for its second
thread.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxnets.onednn import build

TARGET = "jaxnets_onednn_convolution"
BIAS_FORWARD_TARGET = "jaxnets_onednn_convolution_bias_forward"  # y = conv(x, w) + b
BIAS_WEIGHTS_TARGET = "jaxnets_onednn_convolution_bias_weights"  # (dw, db) in one pass
FORWARD, BACKWARD_DATA, BACKWARD_WEIGHTS = 0, 1, 2  # the handler's `kind` attribute (convolution.cc)
DTYPES = ("float32", "bfloat16")
# Convolutions of fewer multiply-adds than this run single-threaded (measured: BENCHMARKS.md, 2026-12-06 round 4).
SERIAL_MACS = 1 << 24


def supports(input_shape: Sequence[int], kernel_shape: Sequence[int], dtype, padding) -> bool:
    """Whether `conv` computes this convolution: 4-D NHWC x HWIO, float32/bfloat16, padding >= 0, output >= 1x1."""
    if len(input_shape) != 4 or len(kernel_shape) != 4 or input_shape[3] != kernel_shape[2]:
        return False
    if jnp.dtype(dtype).name not in DTYPES:
        return False
    if any(p < 0 for pair in padding for p in pair):
        return False
    return all(size + lo + hi >= k for size, (lo, hi), k in zip(input_shape[1:3], padding, kernel_shape[:2],
                                                                  strict=True))


def output_shape(input_shape: Sequence[int], kernel_shape: Sequence[int], strides: Sequence[int],
                 padding) -> tuple[int, int, int, int]:
    """`[N, Ho, Wo, O]` of an `[N, H, W, C] x [kh, kw, C, O]` convolution."""
    (sh, sw), ((pt, pb), (pl, pr)) = strides, padding
    batch, height, width, _ = input_shape
    kh, kw, _, out = kernel_shape
    return batch, (height + pt + pb - kh) // sh + 1, (width + pl + pr - kw) // sw + 1, out


def threads(kernel_shape: Sequence[int], output_shape: Sequence[int]) -> int:
    """The handler's `threads` attribute: 1 (the calling thread alone) below `SERIAL_MACS`, else 0 (all).

    A convolution's forward pass and both gradients each do
    `prod(output_shape) * kh * kw * C` multiply-adds.
    """
    kh, kw, channels, _ = kernel_shape
    return 1 if int(np.prod(output_shape)) * kh * kw * channels < SERIAL_MACS else 0


def _call(kind: int, a: jax.Array, b: jax.Array, shape: Sequence[int], strides, padding, n_threads: int) -> jax.Array:
    build.load()  # registers the handler with XLA (once per process)
    result = jax.ShapeDtypeStruct(tuple(shape), a.dtype)
    return jax.ffi.ffi_call(TARGET, result, vmap_method="sequential")(
        a, b, kind=np.int64(kind), **_attributes(strides, padding, n_threads))


def conv(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
         padding: tuple[tuple[int, int], tuple[int, int]], bias: jax.Array | None = None) -> jax.Array:
    """`[N, H, W, C] x [kh, kw, C, O] (+ bias [O]) -> [N, Ho, Wo, O]`; padding `((top, bottom), (left, right))`.

    Equal to `lax.conv_general_dilated(x, kernel, strides, padding,
    dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + bias` up to float
    reassociation. All operands share one dtype (float32 or bfloat16);
    `strides` and `padding` are static (hashable tuples). With a `bias`, the
    forward pass adds it and the weight gradient's oneDNN call also returns
    the bias gradient (no separate sum over N, H, W). Raises
    `build.Unavailable` when the handler cannot be built here, or this CPU has
    no oneDNN kernels for the dtype (`build.dtype_works`: bfloat16 on an
    AVX2-only CPU).
    """
    build.require_dtype(x.dtype)
    if kernel.shape[:2] == (1, 1) and tuple(strides) != (1, 1) and not any(p for pair in padding for p in pair):
        # A strided 1x1 convolution is a 1x1 convolution of every stride-th pixel. oneDNN 3.2's strided 1x1
        # weight gradient corrupts memory on thin inputs (8 channels): it never sees a strided 1x1 here.
        x = x[:, ::strides[0], ::strides[1], :]
        strides = (1, 1)
    if bias is not None:
        return _conv_bias(x, kernel, bias, tuple(strides), padding)
    return _conv(x, kernel, tuple(strides), padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, kernel, strides, padding):
    shape = output_shape(x.shape, kernel.shape, strides, padding)
    return _call(FORWARD, x, kernel, shape, strides, padding, threads(kernel.shape, shape))


def _forward(x, kernel, strides, padding):
    return _conv(x, kernel, strides, padding), (x, kernel)


def _backward(strides, padding, residuals, grad):
    x, kernel = residuals
    grad = grad.astype(x.dtype)
    n_threads = threads(kernel.shape, grad.shape)
    return (_call(BACKWARD_DATA, grad, kernel, x.shape, strides, padding, n_threads),
            _call(BACKWARD_WEIGHTS, x, grad, kernel.shape, strides, padding, n_threads))


_conv.defvjp(_forward, _backward)


def _attributes(strides, padding, n_threads: int) -> dict:
    """The handlers' shared attributes: `strides`, `padding` flattened (top, bottom, left, right), `threads`."""
    return {"strides": np.asarray(strides, np.int64), "threads": np.int64(n_threads),
            "padding": np.asarray([p for pair in padding for p in pair], np.int64)}


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _conv_bias(x, kernel, bias, strides, padding):
    build.load()
    shape = output_shape(x.shape, kernel.shape, strides, padding)
    call = jax.ffi.ffi_call(BIAS_FORWARD_TARGET, jax.ShapeDtypeStruct(shape, x.dtype), vmap_method="sequential")
    return call(x, kernel, bias, **_attributes(strides, padding, threads(kernel.shape, shape)))


def _bias_forward(x, kernel, bias, strides, padding):
    return _conv_bias(x, kernel, bias, strides, padding), (x, kernel)


def _bias_backward(strides, padding, residuals, grad):
    x, kernel = residuals
    grad = grad.astype(x.dtype)
    n_threads = threads(kernel.shape, grad.shape)
    build.load()
    weights = jax.ffi.ffi_call(BIAS_WEIGHTS_TARGET, (jax.ShapeDtypeStruct(kernel.shape, x.dtype),
                                                     jax.ShapeDtypeStruct(kernel.shape[-1:], x.dtype)),
                               vmap_method="sequential")
    kernel_grad, bias_grad = weights(x, grad, **_attributes(strides, padding, n_threads))
    return _call(BACKWARD_DATA, grad, kernel, x.shape, strides, padding, n_threads), kernel_grad, bias_grad


_conv_bias.defvjp(_bias_forward, _bias_backward)
