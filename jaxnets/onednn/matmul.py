"""A dense layer's matrix product whose forward pass and both gradients are oneDNN calls (XLA:CPU custom calls).

`dense(x, kernel)` is `x @ kernel` for `x` in float32 or bfloat16 and a
kernel kept in any float dtype (float32 weights of a bfloat16 model): the
kernel is cast to `x`'s dtype, the product accumulated in float32 and
rounded once to `x`'s dtype. Its gradients are `g @ kernel^T` (rounded to
`x`'s dtype) and `x^T @ g` (rounded once, straight to the kernel's dtype),
oneDNN's matmul on operands described by their strides: no transpose in XLA.
Why: jax 0.10.2's bfloat16 dots ran at 100-150 GFLOP/s on a Zen 4 core pair
where oneDNN's run at ~400 (BENCHMARKS.md, round 9). A `jax.custom_vjp`, so
`jax.grad`, `jax.jit` and `jax.vmap` (one call per element) see an ordinary
operation. CPU only.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxnets.onednn import build
from jaxnets.onednn.convolution import SERIAL_MACS

TARGET = "jaxnets_onednn_matmul"
WEIGHTS_BIAS_TARGET = "jaxnets_onednn_matmul_weights_bias"  # (x^T @ g, column sums of g) in one call
DTYPES = ("float32", "bfloat16")


def supports(input_shape, kernel_shape, dtype, kernel_dtype) -> bool:
    """Whether `dense` computes this product: `[..., K] x [K, N]`, `dtype` float32/bfloat16, a float kernel."""
    return (len(input_shape) >= 1 and len(kernel_shape) == 2 and input_shape[-1] == kernel_shape[0]
            and jnp.dtype(dtype).name in DTYPES and jnp.issubdtype(kernel_dtype, jnp.floating)
            and jnp.dtype(kernel_dtype).name in DTYPES)


def threads(m: int, k: int, n: int) -> int:
    """The handler's `threads` attribute: 1 (the calling thread alone) below `SERIAL_MACS` multiply-adds, else 0."""
    return 1 if m * k * n < SERIAL_MACS else 0


def product(a: jax.Array, b: jax.Array, out_dtype, *, transpose_a: bool = False,
            transpose_b: bool = False) -> jax.Array:
    """`op(a) @ op(b)` in one oneDNN call, `op` a transpose where asked: `[M, K] x [K, N] -> [M, N]` in `out_dtype`.

    `a` and `b` are 2-D and share one dtype (float32 or bfloat16); the
    product is accumulated in float32. Not differentiable (`dense` is).
    """
    build.load()  # registers the handler with XLA (once per process)
    m, k = a.shape[::-1] if transpose_a else a.shape
    n = b.shape[0] if transpose_b else b.shape[1]
    call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((m, n), out_dtype), vmap_method="sequential")
    return call(a, b, transpose_a=np.int64(transpose_a), transpose_b=np.int64(transpose_b),
                threads=np.int64(threads(m, k, n)))


def dense(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None) -> jax.Array:
    """`[..., K] x [K, N] (+ bias [N]) -> [..., N]` in `x`'s dtype; float32 accumulation; gradients by oneDNN too.

    Equal to `x @ kernel.astype(x.dtype) + bias.astype(x.dtype)` up to float
    reassociation (and rounded once where a bfloat16 dot might round on the
    way). The kernel's and the bias's gradients come back in their own dtypes;
    the bias gradient (the output gradient summed over rows, in float32) comes
    out of the weight gradient's call. Raises `build.Unavailable` when the
    handler cannot be built here or this CPU has no oneDNN kernels for `x`'s
    dtype.
    """
    build.require_dtype(x.dtype)
    rows = x.reshape(-1, x.shape[-1])
    if bias is None:
        y = _dense(rows, kernel, jnp.dtype(kernel.dtype).name)
    else:
        y = _dense_bias(rows, kernel, bias, jnp.dtype(kernel.dtype).name, jnp.dtype(bias.dtype).name)
    return y.reshape(*x.shape[:-1], kernel.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dense(x, kernel, kernel_dtype):
    return product(x, kernel.astype(x.dtype), x.dtype)


def _forward(x, kernel, kernel_dtype):
    narrow = kernel.astype(x.dtype)
    return product(x, narrow, x.dtype), (x, narrow)


def _backward(kernel_dtype, residuals, grad):
    x, narrow = residuals
    grad = grad.astype(x.dtype)
    return (product(grad, narrow, x.dtype, transpose_b=True),
            product(x, grad, kernel_dtype, transpose_a=True))


_dense.defvjp(_forward, _backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _dense_bias(x, kernel, bias, kernel_dtype, bias_dtype):
    return product(x, kernel.astype(x.dtype), x.dtype) + bias.astype(x.dtype)[None, :]


def _bias_forward(x, kernel, bias, kernel_dtype, bias_dtype):
    narrow = kernel.astype(x.dtype)
    return product(x, narrow, x.dtype) + bias.astype(x.dtype)[None, :], (x, narrow)


def _bias_backward(kernel_dtype, bias_dtype, residuals, grad):
    x, narrow = residuals
    grad = grad.astype(x.dtype)
    build.load()
    rows, out = x.shape[0], grad.shape[1]
    weights = jax.ffi.ffi_call(WEIGHTS_BIAS_TARGET, (jax.ShapeDtypeStruct((x.shape[1], out), kernel_dtype),
                                                     jax.ShapeDtypeStruct((out,), jnp.float32)),
                               vmap_method="sequential")
    kernel_grad, bias_grad = weights(x, grad, threads=np.int64(threads(x.shape[1], rows, out)))
    return product(grad, narrow, x.dtype, transpose_b=True), kernel_grad, bias_grad.astype(bias_dtype)


_dense_bias.defvjp(_bias_forward, _bias_backward)
