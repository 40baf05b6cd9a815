"""jaxnets.onednn: oneDNN convolutions, batch norm and matrix products as XLA:CPU custom calls, and their build.

Every convolution shape the models produce, in float32 and bfloat16, must
equal float32 `lax.conv_general_dilated` in the forward pass and both
gradients; batch normalisation must equal flax's (output, statistics, running
averages, gradients). On x86-64 Linux, where jaxnets depends on oneDNN and
a compiler is present (CI's machines), the handlers must build: these tests
fail there, not skip, when they do not.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxnets import backend, layers, models, onednn
from jaxnets.onednn import build

pytestmark = pytest.mark.skipif(sys.platform != "linux" or platform.machine() != "x86_64",
                                reason="jaxnets' oneDNN handlers are built for x86-64 Linux only")

NHWC = ("NHWC", "HWIO", "NHWC")
# (batch, H, W, C, O, kernel, stride, padding): the models' convolution kinds (LeNet, ResNet, VGG).
SHAPES = {
    "lenet 1->6 k5 p2": (4, 28, 28, 1, 6, 5, 1, 2),
    "lenet5 3->6 k5 p0": (3, 32, 32, 3, 6, 5, 1, 0),
    "lenet 6->16 3x3 batch 1": (1, 14, 14, 6, 16, 3, 1, 1),
    "stem 3->64 3x3": (2, 8, 8, 3, 64, 3, 1, 1),
    "resnet 3x3": (2, 8, 8, 16, 16, 3, 1, 1),
    "resnet 3x3 stride 2": (3, 16, 16, 8, 16, 3, 2, 1),
    "resnet 1x1 stride 2 shortcut": (3, 16, 16, 8, 16, 1, 2, 0),
    "imagenet stem 7x7 stride 2": (2, 32, 32, 3, 8, 7, 2, 3),
    "odd map stride 2": (2, 9, 9, 4, 8, 3, 2, 1),
    "vgg 2x2 map": (3, 2, 2, 32, 24, 3, 1, 1),
    "1x1 map": (5, 1, 1, 16, 8, 3, 1, 1),
    "asymmetric padding": (2, 7, 6, 4, 5, 3, 1, (0, 2)),
}
TOLERANCE = {"float32": 1e-4, "bfloat16": 1e-2}


def _relative(a, b) -> float:
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    return float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-12))


def test_the_handlers_build_and_load_here():
    assert onednn.unavailable_reason() is None
    assert onednn.version().startswith("3.")


def _need(dtype) -> None:
    """Skip unless oneDNN has `dtype` kernels on this CPU (bfloat16 needs AVX-512: not on an AVX2-only host)."""
    name = jnp.dtype(dtype).name
    if not build.dtype_works(name):
        pytest.skip(f"oneDNN has no {name} kernels on this CPU (flags: avx512f "
                    f"{'present' if 'avx512f' in backend.cpu_flags() else 'absent'}); tested where it has them")


def _onednn_takes(monkeypatch, dtype) -> None:
    """Make `backend`'s rules send `dtype` convolutions and batch norm to jaxnets' handler, whatever this CPU's
    own rule says (the layers' oneDNN paths are tested on every CPU that can compute `dtype` in oneDNN)."""
    monkeypatch.setenv(backend.ENV_VAR, "fast")
    _need(dtype)
    flags = backend.cpu_flags() | {"avx512f", "avx512_bf16"}
    monkeypatch.setattr(backend, "cpu_flags", lambda: flags)
    assert backend.conv_library(jnp.dtype(dtype)) == "onednn" and backend.batch_norm_in_onednn(jnp.dtype(dtype))


def test_each_dtype_works_where_the_cpu_has_the_instructions():
    flags = backend.cpu_flags()
    assert build.dtype_works("float32")
    assert not build.dtype_works("float16")
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        assert build.dtype_works("bfloat16")
    if "avx512f" not in flags:  # oneDNN 3.2: no bfloat16 below AVX-512
        assert not build.dtype_works("bfloat16")


def test_a_dtype_the_cpu_cannot_compute_is_a_clear_error_and_the_rules_skip_it(monkeypatch):
    monkeypatch.setattr(build, "dtype_works", lambda name: name == "float32")
    x, w, strides, padding = _operands(SHAPES["resnet 3x3"], jnp.bfloat16)
    with pytest.raises(build.Unavailable, match="no bfloat16 convolution .* kernels for this CPU"):
        onednn.conv(x, w, strides, padding)
    with pytest.raises(build.Unavailable, match="compute in float32"):
        onednn.batch_norm(x, jnp.ones(16), jnp.zeros(16), 1e-5)
    assert not backend.library_works("onednn", "bfloat16")
    assert backend.library_works("onednn", "float32")


def _operands(shape, dtype):
    batch, height, width, channels, out, kernel, stride, pad = shape
    rng = np.random.default_rng(sum(s for s in shape if isinstance(s, int)))
    x = jnp.asarray(rng.normal(size=(batch, height, width, channels)), dtype)
    w = jnp.asarray(rng.normal(size=(kernel, kernel, channels, out)) / np.sqrt(kernel * kernel * channels), dtype)
    padding = ((pad, pad), (pad, pad)) if isinstance(pad, int) else (tuple(pad), tuple(reversed(pad)))
    return x, w, (stride, stride), padding


@pytest.mark.parametrize("serial_macs", [0, 1 << 62], ids=["all threads", "one thread"])
@pytest.mark.parametrize("dtype", TOLERANCE)
@pytest.mark.parametrize("name, shape", SHAPES.items(), ids=SHAPES.keys())
def test_conv_equals_lax_forward_and_gradients(name, shape, dtype, serial_macs, monkeypatch):
    _need(dtype)
    # Both ways the handler runs: on oneDNN's OpenMP threads (one call at a time), and single-threaded on XLA's
    # calling threads (the two gradients may then run side by side).
    monkeypatch.setattr(onednn.convolution, "SERIAL_MACS", serial_macs)
    x, w, strides, padding = _operands(shape, jnp.dtype(dtype))
    assert onednn.supports(x.shape, w.shape, dtype, padding)

    def ours(x, w):
        return onednn.conv(x, w, strides, padding)

    def reference(x, w):  # float32 at full precision, on the same (rounded) inputs
        return lax.conv_general_dilated(x.astype(jnp.float32), w.astype(jnp.float32), strides, padding,
                                        dimension_numbers=NHWC, precision=lax.Precision.HIGHEST)

    assert "jaxnets_onednn_convolution" in str(jax.make_jaxpr(ours)(x, w))
    cotangent = jnp.asarray(np.random.default_rng(7).normal(size=jax.eval_shape(reference, x, w).shape), dtype)

    def vjp(f, x, w, cotangent):
        y, pullback = jax.vjp(f, x, w)
        return (y, *pullback(cotangent.astype(y.dtype)))

    got = jax.jit(lambda *a: vjp(ours, *a))(x, w, cotangent)
    want = jax.jit(lambda *a: vjp(reference, *a))(x, w, cotangent.astype(jnp.float32))
    for a, b, what in zip(got, want, ("forward", "input gradient", "weight gradient"), strict=True):
        assert a.dtype == jnp.dtype(dtype) and a.shape == b.shape, what
        assert _relative(a, b) < TOLERANCE[dtype], what


def test_small_convolutions_run_on_one_thread():
    # LeNet's second convolution at batch 128 (12x12x16 outputs of 3x3x6 windows: 15.9M multiply-adds) is
    # single-threaded; ResNet's smallest at batch 32 (a 1x1 256->512 shortcut on 4x4 maps: 67M) is not.
    assert onednn.convolution.threads((3, 3, 6, 16), (128, 12, 12, 16)) == 1
    assert onednn.convolution.threads((1, 1, 256, 512), (32, 4, 4, 512)) == 0
    macs = onednn.convolution.SERIAL_MACS
    assert onednn.convolution.threads((1, 1, 1, 1), (macs - 1, 1, 1, 1)) == 1
    assert onednn.convolution.threads((1, 1, 1, 1), (macs, 1, 1, 1)) == 0


def test_conv_runs_eagerly_and_under_vmap():
    x, w, strides, padding = _operands(SHAPES["resnet 3x3 stride 2"], jnp.float32)
    want = lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)
    assert _relative(onednn.conv(x, w, strides, padding), want) < 1e-5  # not jitted
    stacked = jnp.stack([w, 2 * w])
    got = jax.vmap(lambda k: onednn.conv(x, k, strides, padding))(stacked)
    assert _relative(got[1], 2 * want) < 1e-5


@pytest.mark.parametrize("shape, dtype, padding, supported", [
    ((2, 8, 8, 4), "float32", ((1, 1), (1, 1)), True),
    ((2, 8, 8, 4), "float64", ((1, 1), (1, 1)), False),  # oneDNN has no float64
    ((2, 8, 8, 4), "float16", ((1, 1), (1, 1)), False),
    ((2, 8, 8, 4), "float32", ((-1, 0), (0, 0)), False),  # negative padding crops: XLA's
    ((2, 1, 1, 4), "float32", ((0, 0), (0, 0)), False),  # output would be empty
])
def test_supports(shape, dtype, padding, supported):
    assert onednn.supports(shape, (3, 3, 4, 8), dtype, padding) == supported


# ----------------------------------------------------------------- batch normalisation


def _batch_norm_reference(x, scale, shift, epsilon=1e-5):
    xf = x.astype(jnp.float32)
    mean = xf.mean((0, 1, 2), keepdims=True)
    variance = ((xf - mean) ** 2).mean((0, 1, 2), keepdims=True)
    y = (xf - mean) / jnp.sqrt(variance + epsilon) * scale.reshape(1, 1, 1, -1) + shift.reshape(1, 1, 1, -1)
    return y.astype(x.dtype), mean.reshape(-1), variance.reshape(-1)


@pytest.mark.parametrize("dtype", TOLERANCE)
def test_batch_norm_equals_the_formula_forward_and_gradients(dtype):
    _need(dtype)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(6, 5, 7, 16)) * 3 + 1, dtype)
    scale = jnp.asarray(rng.normal(size=16), jnp.float32)
    shift = jnp.asarray(rng.normal(size=16), jnp.float32)
    weights = jnp.asarray(rng.normal(size=x.shape), jnp.float32)

    def loss(norm, x, scale, shift):
        return jnp.sum(norm(x, scale, shift)[0].astype(jnp.float32) * weights)

    ours = jax.jit(lambda x, s, b: onednn.batch_norm(x, s, b, 1e-5))(x, scale, shift)
    want = _batch_norm_reference(x, scale, shift)
    for a, b, what in zip(ours, want, ("output", "mean", "variance"), strict=True):
        assert a.dtype == b.dtype and _relative(a, b) < TOLERANCE[dtype], what
    got = jax.jit(jax.grad(lambda *a: loss(lambda *b: onednn.batch_norm(*b, 1e-5), *a), argnums=(0, 1, 2)))(
        x, scale, shift)
    want = jax.jit(jax.grad(lambda *a: loss(_batch_norm_reference, *a), argnums=(0, 1, 2)))(x, scale, shift)
    for a, b, what in zip(got, want, ("input", "scale", "shift"), strict=True):
        assert a.dtype == b.dtype and _relative(a, b) < TOLERANCE[dtype], what


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_batchnorm_layer_on_onednn_equals_flax(dtype, monkeypatch):
    """`layers.BatchNorm` in training: oneDNN's path gives flax's output, running averages and gradients."""
    _onednn_takes(monkeypatch, dtype)
    norm = layers.BatchNorm(dtype=jnp.dtype(dtype))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 6, 6, 8)) * 2 - 1, dtype)
    variables = norm.init(jax.random.key(0), x, use_running_average=False)
    variables = {"params": {"scale": jnp.linspace(0.5, 2, 8), "bias": jnp.linspace(-1, 1, 8)},
                 "batch_stats": {"mean": jnp.full(8, 0.3), "var": jnp.full(8, 1.7)}}

    def run(params):
        y, updates = norm.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                                use_running_average=False, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(y.astype(jnp.float32))), (y, updates)

    step = jax.jit(jax.value_and_grad(run, has_aux=True))
    assert "jaxnets_onednn_batch_norm_forward" in str(jax.make_jaxpr(run)(variables["params"]))
    (_, (y, updates)), grads = step(variables["params"])
    monkeypatch.setenv(backend.ENV_VAR, "eigen")  # flax's own reductions
    jax.clear_caches()  # traces are cached per function, not per setting
    assert "jaxnets_onednn" not in str(jax.make_jaxpr(run)(variables["params"]))
    (_, (y_flax, updates_flax)), grads_flax = jax.jit(jax.value_and_grad(run, has_aux=True))(variables["params"])
    assert y.dtype == y_flax.dtype == jnp.dtype(dtype)
    assert _relative(y, y_flax) < TOLERANCE[dtype]
    for key in ("mean", "var"):
        assert _relative(updates["batch_stats"][key], updates_flax["batch_stats"][key]) < 1e-5, key
    for key in ("scale", "bias"):
        assert _relative(grads[key], grads_flax[key]) < TOLERANCE[dtype], key


def test_resnet_train_step_on_onednn_matches_xla(monkeypatch):
    """A whole ResNet-18 (narrow) training forward + gradients: oneDNN's path vs XLA's, same loss and gradients."""
    _onednn_takes(monkeypatch, jnp.float32)
    model = models.create("resnet18", width_divisor=8)
    variables = models.init(model, jax.random.key(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, *model.input_shape)), jnp.float32)

    def loss(params):
        logits, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
        return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[:, 0])

    program = str(jax.make_jaxpr(jax.grad(loss))(variables["params"]))
    assert "jaxnets_onednn_convolution" in program and "jaxnets_onednn_batch_norm" in program
    value, grads = jax.jit(jax.value_and_grad(loss))(variables["params"])
    monkeypatch.setenv(backend.ENV_VAR, "xla")
    jax.clear_caches()  # traces are cached per function, not per setting
    value_xla, grads_xla = jax.jit(jax.value_and_grad(loss))(variables["params"])
    assert abs(float(value) - float(value_xla)) < 1e-4 * abs(float(value_xla))
    flat, flat_xla = jax.tree.leaves(grads), jax.tree.leaves(grads_xla)
    # Relative to the whole gradient's size: BatchNorm bias gradients are sums that nearly cancel, so their own
    # relative error is float32 noise (XLA's Eigen and default paths differ by 2% there too).
    total = float(jnp.sqrt(sum(jnp.sum(g ** 2) for g in flat_xla)))
    worst = max(float(jnp.sqrt(jnp.sum((a - b) ** 2))) for a, b in zip(flat, flat_xla, strict=True))
    assert worst < 1e-4 * total


# ----------------------------------------------------------------- the build


def test_build_key_follows_the_sources_and_versions():
    inputs = build.build_inputs()
    key = build.build_key(inputs)
    assert build.build_key(dict(inputs)) == key
    assert build.build_key({**inputs, "jaxlib": "0.0.1"}) != key
    assert build.build_key({**inputs, "onednn_library": "/elsewhere/libdnnl.so.3"}) != key


def test_a_built_library_is_reused(tmp_path, monkeypatch):
    # A stand-in compiler that writes its `-o` file: the cache logic is under test here, not the C++ build (which
    # test_the_handlers_build_and_load_here does once a session; a second real build cost ~10 s).
    fake = tmp_path / "fake-cxx"
    fake.write_text('#!/bin/sh\nwhile [ "$1" != -o ]; do shift; done\necho built > "$2"\n')
    fake.chmod(0o755)
    monkeypatch.setenv(build.COMPILER_ENV, str(fake))
    first = build.build(tmp_path / "cache")
    assert first.read_text() == "built\n"
    stamp = first.stat().st_mtime_ns

    def no_compile(*args, **kwargs):
        raise AssertionError("compiled again")

    monkeypatch.setattr(build.subprocess, "run", no_compile)
    assert build.build(tmp_path / "cache") == first and first.stat().st_mtime_ns == stamp


def test_missing_onednn_package_is_a_clear_error(monkeypatch):
    def files(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", files)
    with pytest.raises(build.Unavailable, match=f"{build.RUNTIME_PACKAGE} is not installed.*pip install"):
        build.build_inputs()


def test_no_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.delenv(build.COMPILER_ENV, raising=False)
    monkeypatch.setattr(build.shutil, "which", lambda name: None)
    with pytest.raises(build.Unavailable, match="no C\\+\\+ compiler.*JAXNETS_CPU_CONV=eigen"):
        build.compiler()


def test_a_failed_compile_says_why_and_leaves_no_library(tmp_path, monkeypatch):
    broken = tmp_path / "broken-cxx"
    broken.write_text("#!/bin/sh\necho 'convolution.cc:1: error: something broke' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv(build.COMPILER_ENV, str(broken))
    with pytest.raises(build.Unavailable, match="(?s)failed \\(exit 1\\).*something broke"):
        build.build(tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("*.so"))


def test_an_unwritable_cache_is_a_clear_error(tmp_path, monkeypatch):
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("not a folder")
        folder = blocker  # mkdir under a regular file fails even for root
    else:
        folder = tmp_path / "ro"
        folder.mkdir(mode=0o500)
    with pytest.raises(build.Unavailable, match="JAXNETS_CACHE"):
        build.build(folder)


def test_export_keeps_jaxnets_custom_calls_out(tmp_path, monkeypatch):
    """A CPU export traces without the handlers (a loaded program cannot count on them) and still runs."""
    from jaxnets import export

    monkeypatch.setenv(backend.ENV_VAR, "fast")
    model = models.create("lenet", dtype=jnp.float32)
    variables = models.init(model, jax.random.key(0))
    path = export.save(tmp_path / "lenet.jaxexport", "lenet", variables, platforms=("cpu",))
    loaded = export.load(path)
    x = jnp.zeros((2, *model.input_shape), jnp.float32)
    want = model.apply(variables, x, train=False)
    assert _relative(loaded(x), want) < 1e-4


def test_flax_conv_matches_layers_conv_on_onednn(monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "fast")
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 9, 9, 16)), jnp.float32)
    ours, plain = layers.Conv(8, (3, 3), strides=2, padding="SAME"), nn.Conv(8, (3, 3), strides=2, padding="SAME")
    variables = ours.init(jax.random.key(0), x)
    if backend.conv_library(jnp.float32) == "onednn":
        assert "jaxnets_onednn_convolution" in str(jax.make_jaxpr(lambda x: ours.apply(variables, x))(x))
    assert _relative(ours.apply(variables, x), plain.apply(variables, x)) < 1e-5


@pytest.mark.parametrize("serial_macs", [0, 1 << 62], ids=["all threads", "one thread"])
@pytest.mark.parametrize("dtype", TOLERANCE)
@pytest.mark.parametrize("name", ["resnet 3x3 stride 2", "vgg 2x2 map", "lenet 1->6 k5 p2", "asymmetric padding"])
def test_conv_with_bias_equals_lax_plus_bias_forward_and_gradients(name, dtype, serial_macs, monkeypatch):
    _need(dtype)
    monkeypatch.setattr(onednn.convolution, "SERIAL_MACS", serial_macs)
    x, w, strides, padding = _operands(SHAPES[name], jnp.dtype(dtype))
    bias = jnp.asarray(np.random.default_rng(5).normal(size=w.shape[-1:]), dtype)

    def reference(x, w, b):
        y = lax.conv_general_dilated(x.astype(jnp.float32), w.astype(jnp.float32), strides, padding,
                                     dimension_numbers=NHWC, precision=lax.Precision.HIGHEST)
        return y + b.astype(jnp.float32)[None, None, None]

    jaxpr = str(jax.make_jaxpr(jax.grad(lambda *a: onednn.conv(*a[:2], strides, padding, bias=a[2]).sum(),
                                        argnums=(0, 1, 2)))(x, w, bias))
    assert onednn.convolution.BIAS_FORWARD_TARGET in jaxpr and onednn.convolution.BIAS_WEIGHTS_TARGET in jaxpr
    cotangent = jnp.asarray(np.random.default_rng(8).normal(size=jax.eval_shape(reference, x, w, bias).shape), dtype)

    def vjp(f, cotangent, *args):
        y, pullback = jax.vjp(f, *args)
        return (y, *pullback(cotangent.astype(y.dtype)))

    got = jax.jit(lambda c, *a: vjp(lambda *a: onednn.conv(*a[:2], strides, padding, bias=a[2]), c, *a))(
        cotangent, x, w, bias)
    # The reference's gradients in float32 (not rounded to the inputs' dtype), from the same rounded inputs.
    args32 = [a.astype(jnp.float32) for a in (x, w, bias)]
    want = jax.jit(lambda c, *a: vjp(reference, c, *a))(cotangent.astype(jnp.float32), *args32)
    for a, b, what in zip(got, want, ("forward", "input gradient", "weight gradient", "bias gradient"), strict=True):
        assert a.dtype == jnp.dtype(dtype) and a.shape == b.shape, what
        assert _relative(a, b) < TOLERANCE[dtype], what


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("kwargs", [dict(strides=2, padding="SAME"), dict(padding=1), dict(kernel_size=(1, 1))],
                         ids=["3x3 stride 2 SAME", "3x3 pad 1", "1x1"])
def test_conv_layer_hands_its_bias_to_onednn_and_equals_flax(kwargs, dtype, monkeypatch):
    _onednn_takes(monkeypatch, dtype)
    settings = {"features": 8, "kernel_size": (3, 3), **kwargs, "dtype": jnp.dtype(dtype)}
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 9, 9, 16)), dtype).astype(jnp.float32)
    ours = layers.Conv(**settings)
    variables = ours.init(jax.random.key(0), x)
    variables = jax.tree.map(lambda p: p.astype(jnp.dtype(dtype)).astype(jnp.float32), variables)
    assert onednn.convolution.BIAS_FORWARD_TARGET in str(jax.make_jaxpr(lambda v: ours.apply(v, x))(variables))
    # flax's own layer computing in float32 on the same (rounded) values is the reference.
    reference = nn.Conv(**{**settings, "dtype": jnp.float32})
    cotangent = jnp.asarray(np.random.default_rng(2).normal(size=reference.apply(variables, x).shape), jnp.float32)

    def vjp(module):
        y, pullback = jax.vjp(lambda v: module.apply(v, x), variables)
        return y, pullback(cotangent.astype(y.dtype))[0]["params"]

    (y, grads), (want_y, want_grads) = jax.jit(lambda: vjp(ours))(), vjp(reference)
    assert y.dtype == jnp.dtype(dtype) and set(grads) == {"kernel", "bias"}
    assert _relative(y, want_y) < TOLERANCE[dtype]
    for name in grads:
        assert _relative(grads[name], want_grads[name]) < TOLERANCE[dtype], name


@pytest.mark.parametrize("kwargs", [dict(use_bias=False), dict(padding="CIRCULAR"), dict(kernel_dilation=2),
                                    dict(feature_group_count=2)],
                         ids=["no bias", "circular padding", "dilated", "grouped"])
def test_conv_layer_leaves_other_convolutions_to_flax(kwargs, monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "fast")
    settings = {"features": 8, "kernel_size": (3, 3), **kwargs}
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 9, 9, 16)), jnp.float32)
    ours = layers.Conv(**settings)
    variables = ours.init(jax.random.key(0), x)
    assert onednn.convolution.BIAS_FORWARD_TARGET not in str(jax.make_jaxpr(lambda v: ours.apply(v, x))(variables))
    assert _relative(ours.apply(variables, x), nn.Conv(**settings).apply(variables, x)) < 1e-5


# ------------------------------------------------------------- dense layers' matrix products (matmul.cc)

# (input shape, kernel shape): a batch row by row, leading dims, the MLP's first layer (threaded at batch 64).
DENSE_SHAPES = {"rows": ((5, 7), (7, 3)), "leading dims": ((3, 2, 16), (16, 8)), "mlp layer": ((64, 784), (784, 512))}


def _dense_operands(x_shape, k_shape, dtype, kernel_dtype):
    rng = np.random.default_rng(sum(x_shape) + sum(k_shape))
    x = jnp.asarray(rng.normal(size=x_shape), dtype)
    kernel = jnp.asarray(rng.normal(size=k_shape) / np.sqrt(k_shape[0]), kernel_dtype)
    cotangent = jnp.asarray(rng.normal(size=x_shape[:-1] + k_shape[-1:]), dtype)
    return x, kernel, cotangent


@pytest.mark.parametrize("serial_macs", [0, 1 << 62], ids=["all threads", "one thread"])
@pytest.mark.parametrize("dtype, kernel_dtype", [("float32", "float32"), ("bfloat16", "float32"),
                                                 ("bfloat16", "bfloat16")])
@pytest.mark.parametrize("name", DENSE_SHAPES)
def test_dense_equals_a_float64_product_forward_and_gradients(name, dtype, kernel_dtype, serial_macs, monkeypatch):
    """Forward, input and weight gradients against float64 products of the same (rounded) values; each result in
    the dtype it must have (the kernel's gradient in the kernel's dtype: float32 for a bfloat16 model)."""
    _need(dtype)
    monkeypatch.setattr(onednn.matmul, "SERIAL_MACS", serial_macs)
    x, kernel, cotangent = _dense_operands(*DENSE_SHAPES[name], dtype, kernel_dtype)
    y, pullback = jax.vjp(onednn.dense, x, kernel)
    dx, dkernel = jax.jit(pullback)(cotangent)
    x64, cot64 = (np.asarray(a, np.float64).reshape(-1, a.shape[-1]) for a in (x, cotangent))
    k64 = np.asarray(kernel.astype(dtype), np.float64)  # the kernel as the product sees it
    want = {"forward": (x64 @ k64).reshape(y.shape), "input gradient": (cot64 @ k64.T).reshape(x.shape),
            "weight gradient": x64.T @ cot64}
    for got, dtype_wanted, what in [(y, dtype, "forward"), (dx, dtype, "input gradient"),
                                    (dkernel, kernel_dtype, "weight gradient")]:
        assert got.dtype == jnp.dtype(dtype_wanted) and got.shape == want[what].shape, what
        assert _relative(got, want[what]) < TOLERANCE[dtype], what


@pytest.mark.parametrize("serial_macs", [0, 1 << 62], ids=["all threads", "one thread"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", DENSE_SHAPES)
def test_dense_with_bias_equals_a_float64_product_plus_bias(name, dtype, serial_macs, monkeypatch):
    """The bias gradient (the output gradient's column sums) comes out of the weight gradient's call, float32."""
    _need(dtype)
    monkeypatch.setattr(onednn.matmul, "SERIAL_MACS", serial_macs)
    x, kernel, cotangent = _dense_operands(*DENSE_SHAPES[name], dtype, "float32")
    bias = jnp.linspace(-1, 1, kernel.shape[1], dtype=jnp.float32)
    y, pullback = jax.vjp(onednn.dense, x, kernel, bias)
    _, dkernel, dbias = jax.jit(pullback)(cotangent)
    x64, cot64 = (np.asarray(a, np.float64).reshape(-1, a.shape[-1]) for a in (x, cotangent))
    k64, b64 = np.asarray(kernel.astype(dtype), np.float64), np.asarray(bias.astype(dtype), np.float64)
    assert y.dtype == jnp.dtype(dtype) and dkernel.dtype == dbias.dtype == jnp.float32
    assert _relative(y, (x64 @ k64 + b64).reshape(y.shape)) < TOLERANCE[dtype]
    assert _relative(dkernel, x64.T @ cot64) < TOLERANCE[dtype]
    assert _relative(dbias, cot64.sum(axis=0)) < 1e-6  # float32 sums of the exact (rounded) gradient


def test_dense_accumulates_in_float32_and_rounds_once():
    """A long bfloat16 sum (4,096 terms) as exact as float32 accumulation allows: a bfloat16 running sum would be
    ~1% off."""
    _need("bfloat16")
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.uniform(0.5, 1.5, size=(4, 4096)), jnp.bfloat16)
    kernel = jnp.asarray(rng.uniform(0.5, 1.5, size=(4096, 2)), jnp.bfloat16)
    want = np.asarray(x, np.float64) @ np.asarray(kernel, np.float64)
    got = np.asarray(onednn.dense(x, kernel), np.float64)
    assert np.max(np.abs(got - want) / want) <= 2.0 ** -8  # one bfloat16 rounding (half an ulp is 2**-9)


def test_dense_runs_eagerly_and_under_vmap():
    x, kernel, _ = _dense_operands((6, 10), (10, 4), jnp.float32, jnp.float32)
    want = x @ kernel
    assert _relative(onednn.dense(x, kernel), want) < 1e-6  # not jitted
    got = jax.vmap(lambda k: onednn.dense(x, k))(jnp.stack([kernel, 2 * kernel]))
    assert _relative(got[1], 2 * want) < 1e-6


def test_a_matmul_whose_shapes_do_not_chain_is_a_clear_error():
    a, b = jnp.ones((4, 6)), jnp.ones((5, 3))
    with pytest.raises(Exception, match="shapes do not chain"):
        jax.block_until_ready(onednn.matmul.product(a, b, jnp.float32))
    with pytest.raises(Exception, match="share one dtype"):
        jax.block_until_ready(onednn.matmul.product(a, jnp.ones((6, 3), jnp.bfloat16), jnp.float32))
    transposed = onednn.matmul.product(a, jnp.ones((3, 6)), jnp.float32, transpose_b=True)
    assert _relative(transposed, a @ jnp.ones((6, 3))) == 0


@pytest.mark.parametrize("x_shape, k_shape, dtype, kernel_dtype, supported", [
    ((2, 8), (8, 4), "bfloat16", "float32", True),
    ((2, 3, 8), (8, 4), "float32", "float32", True),
    ((2, 8), (7, 4), "float32", "float32", False),  # the inner sizes differ
    ((2, 8), (8, 4), "float16", "float32", False),
    ((2, 8), (8, 4, 1), "float32", "float32", False),
    ((2, 8), (8, 4), "bfloat16", "int8", False),
])
def test_dense_supports(x_shape, k_shape, dtype, kernel_dtype, supported):
    assert onednn.dense_supports(x_shape, k_shape, dtype, kernel_dtype) == supported


def _dense_takes_onednn(monkeypatch, dtype) -> None:
    """Make the rules send `dtype` dense layers to jaxnets' matmul, whatever this CPU and jax version are."""
    _onednn_takes(monkeypatch, dtype)
    monkeypatch.setattr(backend, "jax_version", lambda: (0, 10, 2))
    rule = backend.conv_rule(dtype)
    monkeypatch.setattr(backend, "CONV_RULES", tuple(r._replace(dense=True) if r is rule else r
                                                     for r in backend.CONV_RULES))
    assert backend.dense_in_onednn(jnp.dtype(dtype))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_dense_layer_on_onednn_equals_flax(dtype, monkeypatch):
    """`layers.Dense` on oneDNN: flax's `nn.Dense` output and gradients (in float32 on the same rounded values),
    float32 parameter gradients for a bfloat16 layer."""
    _dense_takes_onednn(monkeypatch, dtype)
    ours = layers.Dense(12, dtype=jnp.dtype(dtype))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 5, 20)), dtype)
    variables = ours.init(jax.random.key(0), x)
    variables = jax.tree.map(lambda p: p.astype(jnp.dtype(dtype)).astype(jnp.float32), variables)
    assert onednn.matmul.TARGET in str(jax.make_jaxpr(lambda v: ours.apply(v, x))(variables))
    reference = nn.Dense(12, dtype=jnp.float32)
    cotangent = jnp.asarray(np.random.default_rng(2).normal(size=(3, 5, 12)), jnp.float32)

    def vjp(module, inputs):
        y, pullback = jax.vjp(lambda v: module.apply(v, inputs), variables)
        return y, pullback(cotangent.astype(y.dtype))[0]["params"]

    (y, grads), (want_y, want_grads) = jax.jit(lambda: vjp(ours, x))(), vjp(reference, x.astype(jnp.float32))
    assert y.dtype == jnp.dtype(dtype) and y.shape == want_y.shape
    assert _relative(y, want_y) < TOLERANCE[dtype]
    for name in ("kernel", "bias"):
        assert grads[name].dtype == jnp.float32, name
        assert _relative(grads[name], want_grads[name]) < TOLERANCE[dtype], name


@pytest.mark.parametrize("kwargs", [dict(precision=lax.Precision.HIGHEST), dict(dot_general=lax.dot_general),
                                    dict(use_bias=False)], ids=["precision", "own dot_general", "no bias"])
def test_dense_layer_leaves_custom_products_to_flax(kwargs, monkeypatch):
    """A layer asking for its own precision or dot_general keeps flax's product; one without a bias is ours."""
    _dense_takes_onednn(monkeypatch, "bfloat16")
    ours = layers.Dense(6, dtype=jnp.bfloat16, **kwargs)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 10)), jnp.float32)
    variables = ours.init(jax.random.key(0), x)
    ours_calls = onednn.matmul.TARGET in str(jax.make_jaxpr(lambda v: ours.apply(v, x))(variables))
    assert ours_calls == ("use_bias" in kwargs)
    want = nn.Dense(6, dtype=jnp.float32, **kwargs).apply(variables, x.astype(jnp.bfloat16).astype(jnp.float32))
    assert _relative(ours.apply(variables, x), want) < TOLERANCE["bfloat16"]


def test_an_empty_batch_gives_zero_weight_and_bias_gradients():
    """A batch of no rows/images sums nothing: the weight and bias gradients are exact zeros (oneDNN would leave
    those buffers unwritten: a first version returned whatever the allocator held, e.g. -6e19)."""
    kernel, bias = jnp.ones((8, 4)), jnp.ones(4)
    for _ in range(3):  # dirty the allocator between calls: a stale buffer would show
        jax.block_until_ready(onednn.dense(jnp.full((64, 8), 7.0), kernel * 3.0, bias))
        y, pullback = jax.vjp(onednn.dense, jnp.zeros((0, 8)), kernel, bias)
        dx, dkernel, dbias = pullback(jnp.zeros((0, 4)))
        assert y.shape == (0, 4) and dx.shape == (0, 8)
        assert not np.any(np.asarray(dkernel)) and not np.any(np.asarray(dbias))
    w, b = jnp.ones((3, 3, 4, 8)), jnp.ones(8)
    for _ in range(3):
        y, pullback = jax.vjp(lambda x, w, b: onednn.conv(x, w, (1, 1), ((1, 1), (1, 1)), bias=b),
                              jnp.zeros((0, 6, 6, 4)), w, b)
        dx, dw, db = pullback(jnp.zeros(y.shape))
        assert y.shape == (0, 6, 6, 8) and dx.shape == (0, 6, 6, 4)
        assert not np.any(np.asarray(dw)) and not np.any(np.asarray(db))
