"""The layers every jaxnets model is built from: one place, thin over flax.

Every convolution, dense layer and normalisation in `jaxnets.models` goes
through the classes here, so that a backend-specific lowering (say a faster
CPU convolution) can be swapped in once, without touching a model file.

Conventions (PyTorch semantics, JAX layouts):
  * images are NHWC, convolution kernels HWIO, dense kernels (in, out);
  * weights start from PyTorch's default init, U(-1/sqrt(fan_in), +1/sqrt(fan_in))
    (kaiming_uniform with a=sqrt(5)); biases start at zero;
  * BatchNorm uses PyTorch's defaults: momentum 0.1 (flax's 0.9 = 1 - 0.1)
    and eps 1e-5.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jax.nn import initializers

# PyTorch's default for Linear and Conv2d weights: kaiming_uniform(a=sqrt(5))
# == U(-b, b) with b = 1/sqrt(fan_in) == variance_scaling(1/3, fan_in, uniform).
torch_default_kernel_init = initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class Conv(nn.Conv):
    """2-D convolution, NHWC in and out, kernel `[kh, kw, in, out]` (HWIO)."""

    kernel_init: initializers.Initializer = torch_default_kernel_init


class Dense(nn.Dense):
    """Fully connected layer: `[..., in] -> [..., out]`, kernel `[in, out]`."""

    kernel_init: initializers.Initializer = torch_default_kernel_init


class BatchNorm(nn.BatchNorm):
    """Batch normalisation over the last (channel) axis with PyTorch defaults.

    Call it as `BatchNorm()(x, use_running_average=not train)`. The running
    statistics live in the `batch_stats` collection (`mean`, `var`).
    """

    momentum: float = 0.9
    epsilon: float = 1e-5


def max_pool(x: jnp.ndarray, window: int = 2, stride: int | None = None) -> jnp.ndarray:
    """`nn.MaxPool2d(window, stride)`: `[N, H, W, C] -> [N, H//s, W//s, C]` (floor)."""
    stride = window if stride is None else stride
    return nn.max_pool(x, (window, window), strides=(stride, stride), padding="VALID")


def avg_pool(x: jnp.ndarray, window: int, stride: int | None = None) -> jnp.ndarray:
    """`nn.AvgPool2d(window, stride)`: `[N, H, W, C] -> [N, H//s, W//s, C]` (floor)."""
    stride = window if stride is None else stride
    return nn.avg_pool(x, (window, window), strides=(stride, stride), padding="VALID")


def _adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
    """`[out, in]` averaging weights with PyTorch's adaptive-pool bin edges."""
    matrix = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)  # ceil
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def adaptive_avg_pool(x: jnp.ndarray, output_size: tuple[int, int]) -> jnp.ndarray:
    """`nn.AdaptiveAvgPool2d(output_size)`: `[N, H, W, C] -> [N, oh, ow, C]`.

    Written as two small matmuls with static pooling matrices, so it is one
    fused op under jit (and replicates the value when H < oh, as PyTorch does).
    """
    _, height, width, _ = x.shape
    rows = jnp.asarray(_adaptive_pool_matrix(height, output_size[0]), x.dtype)
    cols = jnp.asarray(_adaptive_pool_matrix(width, output_size[1]), x.dtype)
    return jnp.einsum("oh,nhwc,pw->nopc", rows, x, cols)


def flatten(x: jnp.ndarray) -> jnp.ndarray:
    """`[N, ...] -> [N, prod(...)]` in NHWC order (see `jaxnets.interop` for NCHW)."""
    return x.reshape((x.shape[0], -1))


def check_input(
    x: jnp.ndarray,
    model: str,
    expected: Sequence[int | None],
) -> None:
    """Raise a `ValueError` that says the expected shape when `x` does not fit.

    Args:
      x: the model input.
      model: the model's name, for the message.
      expected: the expected shape without the batch axis; `None` matches any
        size (for example `(None, None, 3)` for any NHWC RGB image).
    """
    shape = tuple(getattr(x, "shape", ()))
    want = tuple(expected)
    ok = len(shape) == len(want) + 1 and all(w is None or w == s for w, s in zip(want, shape[1:]))
    if ok:
        return
    pretty = "(N, " + ", ".join("any" if w is None else str(w) for w in want) + ")"
    hint = ""

    def fits(dims, wanted) -> bool:
        return len(dims) == len(wanted) and all(w is None or w == d for w, d in zip(wanted, dims))

    if len(shape) == 4 and len(want) == 3 and want[-1] is not None and shape[1] == want[-1]:
        hint = " It looks like NCHW (PyTorch) input: use x.transpose(0, 2, 3, 1)."
    elif fits(shape, want):
        hint = " Add a batch axis: x[None]."
    elif len(want) == 3 and want[-1] == 1 and fits(shape[1:], want[:-1]):
        hint = " Add the channel axis: x[..., None]."
    raise ValueError(f"{model} expects input of shape {pretty}; got {shape}.{hint}")
