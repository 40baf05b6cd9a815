"""The layers every jaxnets model is built from: one place, thin over flax.

Every convolution, dense layer and normalisation in `jaxnets.models` goes
through the classes here, so that a backend-specific lowering (the CPU
convolutions of `jaxnets.convolution`) is swapped in once, without touching
a model file.

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

from jaxnets import backend, onednn
from jaxnets.convolution import conv_algorithm, conv_general_dilated

# PyTorch's default for Linear and Conv2d weights: kaiming_uniform(a=sqrt(5))
# == U(-b, b) with b = 1/sqrt(fan_in) == variance_scaling(1/3, fan_in, uniform).
torch_default_kernel_init = initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# torchvision's ResNet and VGG: kaiming_normal_(mode='fan_out', nonlinearity='relu')
# for convs, N(0, 2 / (out * kh * kw)) (a plain normal, not truncated).
torchvision_conv_init = initializers.variance_scaling(2.0, "fan_out", "normal")
# torchvision's VGG classifier: nn.init.normal_(weight, 0, 0.01), bias 0.
torchvision_linear_init = initializers.normal(0.01)


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

    The convolution itself is `jaxnets.convolution.conv_general_dilated`:
    `lax`'s, except for the CPU lowerings of tiny maps and thin 3x3 kernels.
    Where that runs the convolution in oneDNN, a plain convolution with a bias
    hands the bias to oneDNN too (`onednn.conv(..., bias=)`): it is added in
    the forward call and its gradient comes out of the weight-gradient call,
    where XLA would sum the output gradient over N, H, W separately (slow in
    bfloat16 programs: BENCHMARKS.md, 2026-12-06 round 4). Same parameters,
    same results as flax's `nn.Conv`.
    """

    kernel_init: initializers.Initializer = torch_default_kernel_init
    bias_init: initializers.Initializer = torch_default_bias_init
    conv_general_dilated: Callable | None = conv_general_dilated

    @nn.compact
    def __call__(self, inputs: jnp.ndarray) -> jnp.ndarray:
        plan = self._onednn_bias_plan(inputs)
        if plan is None:
            return super().__call__(inputs)
        strides, padding = plan
        kernel = self.param("kernel", self.kernel_init, tuple(self.kernel_size) + (inputs.shape[-1], self.features),
                            self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        x, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        return onednn.conv(x, kernel, strides, padding, bias=bias)

    def _onednn_bias_plan(self, inputs) -> tuple[tuple[int, int], tuple[tuple[int, int], ...]] | None:
        """`(strides, explicit padding)` where this call takes `onednn.conv` with its bias, else None (flax's path)."""
        plain = (self.use_bias and self.shared_weights and self.mask is None and self.feature_group_count == 1
                 and self.conv_general_dilated is conv_general_dilated and self.conv_general_dilated_cls is None
                 and inputs.ndim == 4 and not isinstance(self.kernel_size, int) and len(self.kernel_size) == 2
                 and all(d in (None, 1) or tuple(np.broadcast_to(d, 2)) == (1, 1)
                         for d in (self.input_dilation, self.kernel_dilation))
                 and not self.is_initializing())
        if not plain:
            return None
        strides = tuple(int(s) for s in np.broadcast_to(1 if self.strides is None else self.strides, 2))
        padding = nn.linear.canonicalize_padding(self.padding, 2)
        if padding in ("SAME", "VALID"):
            padding = lax.padtype_to_pads(inputs.shape[1:3], self.kernel_size, strides, padding)
        elif isinstance(padding, str):  # 'CIRCULAR', 'REFLECT', 'CAUSAL': flax pads the input itself
            return None
        padding = tuple((int(lo), int(hi)) for lo, hi in padding)
        dtype = jnp.dtype(self.dtype) if self.dtype is not None else jnp.result_type(inputs.dtype, self.param_dtype)
        kernel_shape = tuple(self.kernel_size) + (inputs.shape[-1], self.features)
        algorithm = conv_algorithm(jax.default_backend(), inputs.shape, kernel_shape, strides, padding, None, None, 1,
                                   dtype)
        return (strides, padding) if algorithm == "onednn" else None


class Dense(_FanInBias, nn.Dense):
    """Fully connected layer: `[..., in] -> [..., out]`, kernel `[in, out]`.

    Where jaxnets runs dense layers in oneDNN (`backend.dense_in_onednn`:
    bfloat16 on CPUs with bfloat16 dot instructions), a plain layer (no custom
    dot_general or precision) multiplies with `jaxnets.onednn.dense`: the
    product accumulated in float32 and rounded once, the kernel's gradient
    returned in the kernel's own dtype and the bias's computed in the same
    oneDNN call. Same parameters and, up to rounding, the same results as
    flax's `nn.Dense`.
    """

    kernel_init: initializers.Initializer = torch_default_kernel_init
    bias_init: initializers.Initializer = torch_default_bias_init

    @nn.compact
    def __call__(self, inputs: jnp.ndarray) -> jnp.ndarray:
        if not self._onednn_applies(inputs):
            return super().__call__(inputs)
        kernel = self.param("kernel", self.kernel_init, (jnp.shape(inputs)[-1], self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        x, _, _ = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        return onednn.dense(x, kernel, bias)  # the kernel and bias in their own dtypes: cast inside, gradients too

    def _onednn_applies(self, inputs) -> bool:
        """Whether this call multiplies in `onednn.dense` (else flax's `nn.Dense`)."""
        if (self.is_initializing() or self.dot_general is not None or self.dot_general_cls is not None
                or self.precision is not None or jnp.ndim(inputs) < 1):
            return False
        dtype = jnp.dtype(self.dtype) if self.dtype is not None else jnp.result_type(inputs.dtype, self.param_dtype)
        return (backend.dense_in_onednn(dtype)
                and onednn.dense_supports(jnp.shape(inputs), (jnp.shape(inputs)[-1], self.features), dtype,
                                          self.param_dtype))


class BatchNorm(nn.BatchNorm):
    """Batch normalisation over the last (channel) axis with PyTorch defaults.

    Call it as `BatchNorm()(x, use_running_average=not train)`. The running
    statistics live in the `batch_stats` collection (`mean`, `var`).

    In training, where jaxnets runs batch norm in oneDNN
    (`backend.batch_norm_in_onednn(x.dtype)`: on CPUs where that was measured
    to win, see `backend.CONV_RULES`), a plain NHWC normalisation
    (channel axis last, scale and bias, no cross-device axis or mask, output
    in `x`'s dtype) is `jaxnets.onednn.batch_norm` instead of flax's
    reductions: the same parameters, statistics and update, in one pass.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x, use_running_average=None, **kwargs):
        running = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
        if not running and not kwargs and self._onednn_applies(x):
            return self._onednn_batch_norm(x)
        # flax mixes bfloat16 inputs with float32 statistics: fine under JAX's standard promotion, refused under
        # 'strict' (which the tests use to catch silent upcasts in our own code).
        with jax.numpy_dtype_promotion("standard"):
            return super().__call__(x, use_running_average, **kwargs)

    def _onednn_applies(self, x) -> bool:
        """Whether this training-mode call is one `onednn.batch_norm` computes exactly as flax would."""
        out_dtype = jnp.dtype(self.dtype) if self.dtype is not None else jnp.result_type(x.dtype, self.param_dtype)
        plain = (self.axis in (-1, x.ndim - 1) and self.axis_name is None and self.axis_index_groups is None
                 and self.use_scale and self.use_bias and out_dtype == x.dtype
                 and jnp.dtype(self.param_dtype) == jnp.float32 and not self.is_initializing())
        return plain and onednn.batch_norm_supports(x.shape, x.dtype) and backend.batch_norm_in_onednn(x.dtype)

    def _onednn_batch_norm(self, x):
        # The variables flax's BatchNorm declares, by the same names, shapes and dtypes (they exist already: this
        # path never initializes).
        features = (x.shape[-1],)
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), features)
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), features)
        scale = self.param("scale", self.scale_init, features, self.param_dtype)
        bias = self.param("bias", self.bias_init, features, self.param_dtype)
        y, mean, var = onednn.batch_norm(x, scale, bias, float(self.epsilon))
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y


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
    """`nn.MaxPool2d(window, stride, padding)`: `[N, H, W, C] -> [N, Ho, Wo, C]` (floor mode), any float dtype.

    Non-overlapping windows (`stride == window`, every pool in the texts) are
    the elementwise maximum of the window's `window**2` strided slices, and
    the gradient goes to the first maximum of each window in row-major order,
    as PyTorch's does (`_tiled_max_pool`). Both are elementwise passes;
    `lax.reduce_window`'s gradient is a select-and-scatter that XLA:CPU runs
    slowly, and a reshape + `max` over the window axes was 4x slower still
    (BENCHMARKS.md, 2026-12-06 round 4). Overlapping windows (torchvision's
    3x3/2 stem pool) use `flax.linen.max_pool`.
    """
    stride = window if stride is None else stride
    if stride != window or padding:  # overlapping windows: lax.reduce_window
        return nn.max_pool(x, (window, window), strides=(stride, stride), padding=((padding, padding),) * 2)
    return _tiled_max_pool(x, window)


def _window_slices(x: jnp.ndarray, window: int) -> list[jnp.ndarray]:
    """The `window**2` strided slices `x[:, i::window, j::window]` (row-major `i, j`), ragged edge dropped."""
    rows, cols = x.shape[1] // window, x.shape[2] // window
    x = x[:, :rows * window, :cols * window]  # floor mode: drop the ragged edge, as PyTorch does
    return [x[:, i::window, j::window] for i in range(window) for j in range(window)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _tiled_max_pool(x: jnp.ndarray, window: int) -> jnp.ndarray:
    """Max over non-overlapping `window x window` tiles: `[N, H, W, C] -> [N, H // window, W // window, C]`."""
    return functools.reduce(jnp.maximum, _window_slices(x, window))


def _tiled_max_pool_forward(x, window):
    y = _tiled_max_pool(x, window)
    return y, (x, y)


def _tiled_max_pool_backward(window, residuals, grad):
    """Each output's gradient to the first input of its tile equal to the maximum, zeros elsewhere.

    The `window**2` masked gradients are interleaved back into place by one
    stack + reshape (`[N, rows, i, cols, j, C] -> [N, H, W, C]`), then the
    ragged edge is padded with zeros. Scattering each part with an
    interior-padded `lax.pad` instead computed the same, 3-16x slower in
    bfloat16 (XLA:CPU evaluates the pads' index arithmetic per element;
    BENCHMARKS.md, 2026-12-07 round 8).
    """
    x, y = residuals
    height, width = x.shape[1:3]
    rows, cols = y.shape[1:3]
    zero = jnp.zeros((), grad.dtype)
    taken = jnp.zeros(y.shape, bool)
    parts = []
    for part in _window_slices(x, window):  # row-major i, j
        first = (part == y) & ~taken
        taken = taken | first
        parts.append(jnp.where(first, grad, zero))
    tiles = jnp.stack([jnp.stack(parts[i * window:(i + 1) * window], axis=3) for i in range(window)], axis=2)
    dx = tiles.reshape(x.shape[0], rows * window, cols * window, x.shape[3])
    return (jnp.pad(dx, ((0, 0), (0, height - rows * window), (0, width - cols * window), (0, 0))),)


_tiled_max_pool.defvjp(_tiled_max_pool_forward, _tiled_max_pool_backward)


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
    ok = len(shape) == len(want) + 1 and all(w is None or w == s for w, s in zip(want, shape[1:], strict=True))
    if ok:
        return
    pretty = "(N, " + ", ".join("any" if w is None else str(w) for w in want) + ")"
    hint = ""

    def fits(dims, wanted) -> bool:
        return len(dims) == len(wanted) and all(w is None or w == d for w, d in zip(wanted, dims, strict=True))

    if len(shape) == 4 and len(want) == 3 and want[-1] is not None and shape[1] == want[-1]:
        hint = " It looks like NCHW (PyTorch) input: use x.transpose(0, 2, 3, 1)."
    elif fits(shape, want):
        hint = " Add a batch axis: x[None]."
    elif len(want) == 3 and want[-1] == 1 and fits(shape[1:], want[:-1]):
        hint = " Add the channel axis: x[..., None]."
    raise ValueError(f"{model} expects input of shape {pretty}; got {shape}.{hint}")
