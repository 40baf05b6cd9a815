"""Training-mode batch normalisation whose forward pass and gradient are oneDNN calls (XLA:CPU custom calls).

XLA:CPU computes flax's batch statistics and their gradients as several
reductions and elementwise passes over each activation (a fifth of a
bfloat16 ResNet-18 train step); oneDNN's batch normalisation primitives do
each direction in one pass. `batch_norm` is a `jax.custom_vjp`, CPU only, on
NHWC float32/bfloat16 activations with float32 scale, shift and statistics.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxnets.onednn import build

FORWARD_TARGET = "jaxnets_onednn_batch_norm_forward"
BACKWARD_TARGET = "jaxnets_onednn_batch_norm_backward"
DTYPES = ("float32", "bfloat16")


def supports(shape, dtype) -> bool:
    """Whether `batch_norm` normalises this activation: 4-D NHWC, float32 or bfloat16, at least one element."""
    return len(shape) == 4 and jnp.dtype(dtype).name in DTYPES and all(d > 0 for d in shape)


def _channel(x: jax.Array) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((x.shape[-1],), jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm(x: jax.Array, scale: jax.Array, shift: jax.Array,
               epsilon: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Normalise `x` `[N, H, W, C]` with its own batch statistics: `(y, mean, variance)`.

    `y = (x - mean) / sqrt(variance + epsilon) * scale + shift` in `x`'s dtype;
    `mean` and `variance` `[C]` float32 over N, H and W (the biased variance,
    as `flax.linen.BatchNorm` uses it). `scale` and `shift` are float32 `[C]`.
    Gradients flow to `x`, `scale` and `shift` (not through the returned
    statistics: they feed running averages, which take no gradient). Raises
    `build.Unavailable` where the handler cannot run `x`'s dtype (see
    `build.require_dtype`).
    """
    build.require_dtype(x.dtype)
    call = jax.ffi.ffi_call(FORWARD_TARGET, (jax.ShapeDtypeStruct(x.shape, x.dtype), _channel(x), _channel(x)),
                            vmap_method="sequential")
    return call(x, scale, shift, epsilon=np.float32(epsilon))


def _forward(x, scale, shift, epsilon):
    y, mean, variance = batch_norm(x, scale, shift, epsilon)
    return (y, mean, variance), (x, scale, mean, variance)


def _backward(epsilon, residuals, grads):
    x, scale, mean, variance = residuals
    dy = grads[0].astype(x.dtype)
    call = jax.ffi.ffi_call(BACKWARD_TARGET, (jax.ShapeDtypeStruct(x.shape, x.dtype), _channel(x), _channel(x)),
                            vmap_method="sequential")
    dx, dscale, dshift = call(x, dy, scale, mean, variance, epsilon=np.float32(epsilon))
    return dx, dscale, dshift


batch_norm.defvjp(_forward, _backward)
