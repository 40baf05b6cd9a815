"""Convolution lowerings on the CPU: which one each convolution takes, and the lowerings themselves.

`conv_general_dilated` is what `jaxnets.layers.Conv` calls. On the CPU with
jaxnets' CPU path on (`jaxnets.backend`), a plain 2-D NHWC convolution may
run in oneDNN (`jaxnets.onednn.conv`, where `backend.conv_library` picks it),
as one matmul per kernel tap (`tap_conv`, maps smaller than the kernel window) or as
im2col (`im2col_conv`, thin 3x3 kernels); everything else, and every
convolution on GPU/TPU, is `lax.conv_general_dilated` (cuDNN / the TPU
compiler decide there). BENCHMARKS.md has the measurements behind each rule.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from jaxnets import backend, onednn

ALGORITHMS = ("lax", "taps", "im2col", "onednn")

# Thin 3x3 convolutions (few input and output channels: MNIST LeNet's 1->6 and 6->16) run faster as im2col
# (9 shifted slices + one matmul) than as XLA:CPU's Eigen convolution; wider ones (the 3->64 stem) do not.
IM2COL_MAX_PATCH = 64  # in_channels * 9
IM2COL_MAX_OUT = 16


def conv_algorithm(platform: str, input_shape: Sequence[int], kernel_shape: Sequence[int],
                   strides: Sequence[int], padding, lhs_dilation, rhs_dilation, groups: int, dtype=None) -> str:
    """Which lowering `conv_general_dilated` uses: `'taps'`, `'im2col'`, `'onednn'` or `'lax'`.

    Only on the CPU with jaxnets' CPU path on (`jaxnets.backend`), for a plain
    2-D NHWC convolution: `'taps'` (`tap_conv`, one matmul per kernel tap)
    when its kernel window is larger than its input map (`kh * kw > H * W`:
    VGG's 3x3 convs on 2x2 maps), in every dtype: there it beat oneDNN 1.7-2x
    and the earlier one-matmul lowering 2-4x (XLA's own convolution swaps the
    operands of exactly these and runs far off its fast paths). Else
    `'onednn'` (`jaxnets.onednn.conv`: forward and both gradients in oneDNN)
    when `backend.conv_library` says oneDNN for this dtype, input channel
    count, stride and batch (a rule may keep wide stride-1 convolutions of
    small batches in XLA's); else `'im2col'` for thin 3x3 convolutions
    (`in * 9 <= IM2COL_MAX_PATCH` and `out <= IM2COL_MAX_OUT`: LeNet's, where
    oneDNN is not taken). Everything else, and every convolution on GPU/TPU,
    is `lax.conv_general_dilated`. BENCHMARKS.md has the measurements.
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
        return "taps"
    if (dtype is not None and onednn.supports(input_shape, kernel_shape, dtype, padding)
            and backend.conv_library(dtype, platform, in_channels=channels, strides=tuple(strides),
                                     batch=input_shape[0]) == "onednn"):
        return "onednn"
    if (kh, kw) == (3, 3) and channels * kh * kw <= IM2COL_MAX_PATCH and out <= IM2COL_MAX_OUT:
        return "im2col"
    return "lax"


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """`a @ b` (`[..., K] x [K, N]`) accumulated in at least float32, in the forward and both gradients.

    What a convolution library does for bfloat16 (XLA's Eigen and oneDNN
    convolutions round once, at the end). jax 0.12's bfloat16 dots do not: a
    LeNet weight gradient (3,136 terms) came out 3.5% off. So 16-bit float
    operands are multiplied in float32 and the result rounded once; float32
    and float64 are unchanged.
    """
    dtype = jnp.result_type(a, b)
    if jnp.finfo(dtype).bits >= 32:  # float32 and float64 as they are
        return a @ b
    return (a.astype(jnp.float32) @ b.astype(jnp.float32)).astype(dtype)


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
    return matmul(patches, kernel.reshape(kh * kw * channels, out))


def tap_conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding) -> jax.Array:
    """A small-map 2-D convolution as one matmul per kernel tap. `[N, H, W, C] x [kh, kw, C, O] -> [N, Ho, Wo, O]`.

    For each tap `(dy, dx)` of the window, the input pixels it links to an
    output pixel (never padding) are stacked into `[k * N, C]` and multiplied
    by `kernel[dy, dx]` (`[C, O]`, a slice: no copy of the kernel); the
    products are summed into their output pixels. That is exactly the
    convolution's multiply-adds, none on padding (a 3x3 window on a 2x2 map:
    16 pixel pairs where im2col computes 36), and the weight gradient is one
    `[C, k * N] x [k * N, O]` product per tap. 16-bit floats are computed in
    float32 and rounded once at the end (`matmul`'s rule; their dots were
    several times slower). Gradients by autodiff. Equal to
    `lax.conv_general_dilated` up to float reassociation.
    """
    batch, height, width, channels = x.shape
    kh, kw, _, out_channels = kernel.shape
    (sh, sw), ((pt, pb), (pl, pr)) = strides, padding
    out_h = (height + pt + pb - kh) // sh + 1
    out_w = (width + pl + pr - kw) // sw + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(f"a {kh}x{kw} window does not fit a {height}x{width} map padded by {padding}: no output "
                         "pixel; pad the input or use a smaller kernel")
    dtype = x.dtype
    compute = jnp.float32 if jnp.finfo(dtype).bits <= 32 else dtype  # float64 stays
    x, kernel = x.astype(compute), kernel.astype(compute)
    sums: dict[tuple[int, int], jax.Array] = {}
    for dy in range(kh):
        for dx in range(kw):
            pairs = [(oh, ow, oh * sh + dy - pt, ow * sw + dx - pl) for oh in range(out_h) for ow in range(out_w)]
            pairs = [(oh, ow, ih, iw) for oh, ow, ih, iw in pairs if 0 <= ih < height and 0 <= iw < width]
            if not pairs:
                continue
            products = jnp.concatenate([x[:, ih, iw] for _, _, ih, iw in pairs]) @ kernel[dy, dx]  # [k * N, O]
            for k, (oh, ow, _, _) in enumerate(pairs):
                part = products[k * batch:(k + 1) * batch]
                sums[oh, ow] = sums[oh, ow] + part if (oh, ow) in sums else part
    zero = jnp.zeros((batch, out_channels), compute)  # an output pixel whose window holds only padding
    rows = [jnp.stack([sums.get((oh, ow), zero) for ow in range(out_w)], axis=1) for oh in range(out_h)]
    return jnp.stack(rows, axis=1).astype(dtype)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    """`lax.conv_general_dilated` with jaxnets' CPU lowering for tiny maps (see `conv_algorithm`).

    flax's `nn.Conv` calls it with NHWC inputs and HWIO kernels.
    """
    nhwc = dimension_numbers is not None and tuple(dimension_numbers.lhs_spec) == (0, 3, 1, 2) and tuple(
        dimension_numbers.rhs_spec) == (3, 2, 0, 1)
    undilated = all(d == 1 for d in tuple(lhs_dilation or ()) + tuple(rhs_dilation or ()))
    if nhwc and isinstance(padding, str) and undilated:
        # 'SAME' / 'VALID' as explicit pads (what lax does with them too), so such convolutions get the CPU lowerings.
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    algorithm = conv_algorithm(jax.default_backend(), lhs.shape, rhs.shape, window_strides, padding, lhs_dilation,
                               rhs_dilation, feature_group_count, lhs.dtype) if nhwc and not kwargs else "lax"
    if algorithm == "taps":
        return tap_conv(lhs, rhs, window_strides, tuple(tuple(p) for p in padding))
    if algorithm == "im2col":
        return im2col_conv(lhs, rhs, window_strides, tuple(tuple(p) for p in padding))
    if algorithm == "onednn" and lhs.dtype == rhs.dtype:
        return onednn.conv(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding))
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                    rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                    feature_group_count=feature_group_count, precision=precision, **kwargs)
