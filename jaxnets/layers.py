"""The layers every jaxnets model is built from: one place, thin over flax.

Every convolution, dense layer and normalisation in `jaxnets.models` goes
through the classes here, so that a backend-specific lowering (say a faster
CPU convolution) can be swapped in once, without touching a model file.

Conventions (PyTorch semantics, JAX layouts):
  * images are NHWC, convolution kernels HWIO, dense kernels (in, out);
  * weights and biases start from PyTorch's layer defaults: weights
    U(-1/sqrt(fan_in), +1/sqrt(fan_in)) (kaiming_uniform with a=sqrt(5)),
    biases U(-1/sqrt(fan_in), +1/sqrt(fan_in)) with fan_in = in * kh * kw;
    models that follow torchvision's layouts pass torchvision's own inits
    (`torchvision_conv_init`, `torchvision_linear_init`, zero biases);
  * BatchNorm uses PyTorch's defaults: momentum 0.1 (flax's 0.9 = 1 - 0.1)
    and eps 1e-5.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.nn import initializers

from jaxnets import backend

# PyTorch's default for Linear and Conv2d weights: kaiming_uniform(a=sqrt(5))
# == U(-b, b) with b = 1/sqrt(fan_in) == variance_scaling(1/3, fan_in, uniform).
torch_default_kernel_init = initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# torchvision's ResNet and VGG: kaiming_normal_(mode='fan_out', nonlinearity='relu')
# for convs, N(0, 2 / (out * kh * kw)) (a plain normal, not truncated).
torchvision_conv_init = initializers.variance_scaling(2.0, "fan_out", "normal")
# torchvision's VGG classifier: nn.init.normal_(weight, 0, 0.01), bias 0.
torchvision_linear_init = initializers.normal(0.01)


# Thin 3x3 convolutions (few input and output channels: MNIST LeNet's 1->6 and 6->16) run faster as im2col
# (9 shifted slices + one matmul) than as XLA:CPU's Eigen convolution; wider ones (the 3->64 stem) do not.
IM2COL_MAX_PATCH = 64  # in_channels * 9
IM2COL_MAX_OUT = 16


def conv_algorithm(platform: str, input_shape: Sequence[int], kernel_shape: Sequence[int],
                   strides: Sequence[int], padding, lhs_dilation, rhs_dilation, groups: int) -> str:
    """Which lowering `conv_general_dilated` uses: `'dense'` (one matmul), `'im2col'` or `'lax'`.

    Only on the CPU with jaxnets' CPU path on (`jaxnets.backend`), for a plain
    2-D NHWC convolution: `'dense'` when its kernel window is larger than its
    input map (`kh * kw > H * W`: VGG's 3x3 convs on 2x2 maps; XLA swaps the
    operands of exactly those and runs them far off its fast paths, as a
    matmul they run at matmul speed); `'im2col'` for thin 3x3 convolutions
    (`in * 9 <= IM2COL_MAX_PATCH` and `out <= IM2COL_MAX_OUT`: LeNet's).
    Everything else, and every convolution on GPU/TPU, is `lax.conv_general_dilated`.
    """
    if not backend.fast_cpu_path(platform) or len(input_shape) != 4 or groups != 1:
        return "lax"
    if any(d != 1 for d in tuple(lhs_dilation or (1, 1)) + tuple(rhs_dilation or (1, 1))):
        return "lax"
    if isinstance(padding, str):
        return "lax"
    height, width = input_shape[1], input_shape[2]
    kh, kw, channels, out = kernel_shape
    if kh * kw > height * width:
        return "dense"
    if (kh, kw) == (3, 3) and channels * kh * kw <= IM2COL_MAX_PATCH and out <= IM2COL_MAX_OUT:
        return "im2col"
    return "lax"


def im2col_conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding) -> jax.Array:
    """A 2-D convolution as kh*kw shifted (strided) slices + one matmul. `[N,H,W,C] x [kh,kw,C,O] -> [N,Ho,Wo,O]`.

    `padding` is `((top, bottom), (left, right))`. Gradients flow through the
    slices and the matmul (autodiff), so forward, input and weight gradients
    are all slices and matmuls too.
    """
    kh, kw, channels, out = kernel.shape
    (sh, sw), ((pt, pb), (pl, pr)) = strides, padding
    padded = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    out_h = (x.shape[1] + pt + pb - kh) // sh + 1
    out_w = (x.shape[2] + pl + pr - kw) // sw + 1
    patches = jnp.concatenate([
        lax.slice(padded, (0, i, j, 0), (x.shape[0], i + (out_h - 1) * sh + 1, j + (out_w - 1) * sw + 1, channels),
                  (1, sh, sw, 1))
        for i in range(kh) for j in range(kw)], axis=-1)
    return patches @ kernel.reshape(kh * kw * channels, out)


def _dense_conv_indices(in_hw, kernel_hw, strides, padding) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Static gather indices that turn an HWIO kernel into an `[H*W, Ho*Wo]` tap table.

    Returns (tap index `[H*W, Ho*Wo]` into the flattened `kh*kw` window, valid
    mask of the same shape, (Ho, Wo)).
    """
    (height, width), (kh, kw), (sh, sw) = in_hw, kernel_hw, strides
    (pt, pb), (pl, pr) = padding
    out_h = (height + pt + pb - kh) // sh + 1
    out_w = (width + pl + pr - kw) // sw + 1
    ih, iw, oh, ow = np.meshgrid(np.arange(height), np.arange(width), np.arange(out_h), np.arange(out_w),
                                 indexing="ij")
    dy, dx = ih - oh * sh + pt, iw - ow * sw + pl  # kernel tap that links input (ih, iw) to output (oh, ow)
    valid = (dy >= 0) & (dy < kh) & (dx >= 0) & (dx < kw)
    taps = np.where(valid, dy * kw + dx, 0).reshape(height * width, out_h * out_w)
    return taps, valid.reshape(height * width, out_h * out_w), (out_h, out_w)


def dense_conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding) -> jax.Array:
    """A small-map 2-D convolution as one matmul. `[N, H, W, C] x [kh, kw, C, O] -> [N, Ho, Wo, O]`.

    The kernel is gathered into a `[H*W*C, Ho*Wo*O]` matrix (zeros where a
    tap falls into the padding), so for tiny maps the whole layer is one
    `[N, H*W*C] @ [H*W*C, Ho*Wo*O]` product; gradients flow through the
    gather. Equal to `lax.conv_general_dilated` up to float reassociation.
    """
    batch, height, width, channels = x.shape
    kh, kw, _, out_channels = kernel.shape
    taps, valid, (out_h, out_w) = _dense_conv_indices((height, width), (kh, kw), tuple(strides), padding)
    table = kernel.reshape(kh * kw, channels, out_channels)[taps]  # [H*W, Ho*Wo, C, O]
    table = table * jnp.asarray(valid, kernel.dtype)[:, :, None, None]
    matrix = table.transpose(0, 2, 1, 3).reshape(height * width * channels, out_h * out_w * out_channels)
    y = x.reshape(batch, height * width * channels) @ matrix
    return y.reshape(batch, out_h, out_w, out_channels)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    """`lax.conv_general_dilated` with jaxnets' CPU lowering for tiny maps (see `conv_algorithm`).

    flax's `nn.Conv` calls it with NHWC inputs and HWIO kernels.
    """
    nhwc = dimension_numbers is not None and tuple(dimension_numbers.lhs_spec) == (0, 3, 1, 2) and tuple(
        dimension_numbers.rhs_spec) == (3, 2, 0, 1)
    algorithm = conv_algorithm(jax.default_backend(), lhs.shape, rhs.shape, window_strides, padding, lhs_dilation,
                               rhs_dilation, feature_group_count) if nhwc and not kwargs else "lax"
    if algorithm == "dense":
        return dense_conv(lhs, rhs, window_strides, tuple(tuple(p) for p in padding))
    if algorithm == "im2col":
        return im2col_conv(lhs, rhs, window_strides, tuple(tuple(p) for p in padding))
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                    rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                    feature_group_count=feature_group_count, precision=precision, **kwargs)


class TorchDefaultBiasInit:
    """PyTorch's Linear/Conv2d bias init: U(-1/sqrt(fan_in), +1/sqrt(fan_in)).

    A bias alone does not know its layer's fan_in, so `Conv` and `Dense` call
    it with `fan_in=` read off the kernel they have just created
    (`fan_in = prod(kernel.shape[:-1])`, i.e. in * kh * kw).
    """

    def __call__(self, key: jax.Array, shape: Sequence[int], dtype=jnp.float32, *, fan_in: int | None = None):
        if fan_in is None:
            raise ValueError("TorchDefaultBiasInit needs fan_in; use it through jaxnets.layers.Conv/Dense")
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        return jax.random.uniform(key, shape, dtype, -bound, bound)


torch_default_bias_init = TorchDefaultBiasInit()


class _FanInBias:
    """Gives `TorchDefaultBiasInit` the fan_in of the layer's kernel."""

    @nn.nowrap
    def param(self, name, init_fn, *init_args, **init_kwargs):
        if name == "bias" and isinstance(init_fn, TorchDefaultBiasInit):
            kernel = self.get_variable("params", "kernel")
            init_fn = functools.partial(init_fn, fan_in=math.prod(np.shape(kernel)[:-1]))
        return super().param(name, init_fn, *init_args, **init_kwargs)


class Conv(_FanInBias, nn.Conv):
    """2-D convolution, NHWC in and out, kernel `[kh, kw, in, out]` (HWIO).

    The convolution itself is `conv_general_dilated` above: `lax`'s, except
    for the CPU lowering of tiny maps.
    """

    kernel_init: initializers.Initializer = torch_default_kernel_init
    bias_init: initializers.Initializer = torch_default_bias_init
    conv_general_dilated: Callable | None = conv_general_dilated


class Dense(_FanInBias, nn.Dense):
    """Fully connected layer: `[..., in] -> [..., out]`, kernel `[in, out]`."""

    kernel_init: initializers.Initializer = torch_default_kernel_init
    bias_init: initializers.Initializer = torch_default_bias_init


class BatchNorm(nn.BatchNorm):
    """Batch normalisation over the last (channel) axis with PyTorch defaults.

    Call it as `BatchNorm()(x, use_running_average=not train)`. The running
    statistics live in the `batch_stats` collection (`mean`, `var`).
    """

    momentum: float = 0.9
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x, use_running_average=None, **kwargs):
        # flax mixes bfloat16 inputs with float32 statistics: fine under JAX's standard promotion, refused under
        # 'strict' (which the tests use to catch silent upcasts in our own code).
        with jax.numpy_dtype_promotion("standard"):
            return super().__call__(x, use_running_average, **kwargs)


def logits_dtype(dtype) -> np.dtype:
    """The dtype a model returns its logits in: float32 from any compute dtype, float64 kept.

    NumPy's promotion rule, which holds under `jax_numpy_dtype_promotion='strict'`
    (JAX's own refuses bfloat16 with float32 there).
    """
    return np.promote_types(dtype, np.float32)


def divide_width(channels: int, divisor: int, model: str) -> int:
    """`channels // divisor`: the channel count of a narrowed variant (`width_divisor`) of a model.

    Raises:
      ValueError: `divisor` is not a positive integer that leaves at least one channel.
    """
    if isinstance(divisor, bool) or not isinstance(divisor, int) or not 1 <= divisor <= channels:
        raise ValueError(f"{model}: width_divisor must be an integer in [1, {channels}] (got {divisor!r})")
    return channels // divisor


def max_pool(x: jnp.ndarray, window: int = 2, stride: int | None = None, padding: int = 0) -> jnp.ndarray:
    """`nn.MaxPool2d(window, stride, padding)`: `[N, H, W, C] -> [N, Ho, Wo, C]` (floor mode).

    Non-overlapping windows (`stride == window`, every pool in the texts) are
    a reshape + max: its gradient is a cheap equality mask, where
    `lax.reduce_window`'s is a select-and-scatter that XLA:CPU runs slowly. The one difference from
    PyTorch is on exact ties inside a window: PyTorch routes the gradient to
    one of the tied inputs, this splits it among them. The pools here follow
    a ReLU, where ties are zeros whose gradient the ReLU zeroes anyway.
    """
    stride = window if stride is None else stride
    if stride != window or padding:  # overlapping windows (torchvision's 3x3/2 stem pool): lax.reduce_window
        return nn.max_pool(x, (window, window), strides=(stride, stride), padding=((padding, padding),) * 2)
    batch, height, width, channels = x.shape
    rows, cols = height // window, width // window
    x = x[:, :rows * window, :cols * window]  # floor mode: drop the ragged edge, as PyTorch does
    return x.reshape(batch, rows, window, cols, window, channels).max(axis=(2, 4))


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
