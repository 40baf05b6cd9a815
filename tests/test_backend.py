"""jaxnets.backend + the CPU convolution lowerings in jaxnets.convolution.

The CPU path must (1) equal `lax.conv_general_dilated` in forward and both
gradients on every convolution shape the models produce, through the lowering
that shape is labelled with (whatever backend or setting the suite runs on), (2) be chosen only on
the CPU and only when not switched off, and (3) really keep convolutions out
of YNNPACK in the compiled program.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxnets import backend, convolution, layers, models

NHWC = ("NHWC", "HWIO", "NHWC")

# (batch, H, W, C, O, kernel, stride, padding): every kind of convolution the models produce, each labelled with
# the lowering jaxnets' CPU path gives it.
CONV_SHAPES = {
    "lenet 1-channel stem k3 p1 (im2col)": (4, 28, 28, 1, 6, 3, 1, 1),
    "lenet5 3-channel stem k5 p0 (lax)": (3, 32, 32, 3, 6, 5, 1, 0),
    "lenet 1-channel 3x3 (im2col)": (3, 28, 28, 1, 6, 3, 1, 1),
    "lenet 6->16 3x3 batch 1 (im2col)": (1, 14, 14, 6, 16, 3, 1, 1),
    "thin 3x3 stride 2 (im2col)": (2, 9, 9, 4, 8, 3, 2, 1),
    "3x3 with 64 outputs (lax)": (2, 8, 8, 3, 64, 3, 1, 1),
    "3-channel stem k3 p1, 16 outputs (im2col)": (2, 32, 32, 3, 16, 3, 1, 1),
    "resnet stride-2 3x3 (lax)": (3, 16, 16, 8, 16, 3, 2, 1),
    "resnet 1x1 stride-2 shortcut (lax)": (3, 16, 16, 8, 16, 1, 2, 0),
    "resnet 4x4 map (lax)": (2, 4, 4, 16, 16, 3, 1, 1),
    "vgg 2x2 map (taps)": (3, 2, 2, 32, 24, 3, 1, 1),
    "vgg 2x2 map batch 1 (taps)": (1, 2, 2, 32, 32, 3, 1, 1),
    "1x1 map (taps)": (5, 1, 1, 16, 8, 3, 1, 1),
    "2x2 map stride 2 (taps)": (3, 2, 2, 8, 8, 3, 2, 1),
    "5x5 window on a 3x3 map (taps)": (2, 3, 3, 8, 8, 5, 1, 2),
    "5x5 window stride 2 on a 4x4 map (taps)": (2, 4, 4, 8, 8, 5, 2, 2),
    "1x1 kernel on 1x1 map (lax)": (3, 1, 1, 8, 8, 1, 1, 0),
}


def _labelled_algorithm(name: str) -> str:
    """The lowering a `CONV_SHAPES` entry names in parentheses."""
    (algorithm,) = [a for a in convolution.ALGORITHMS if f"({a})" in name]
    return algorithm


def _conv_pair(shape, algorithm, dtype=jnp.float32):
    batch, height, width, channels, out, kernel, stride, pad = shape
    rng = np.random.default_rng(sum(shape))  # numpy: no per-shape compiles for the inputs
    x = jnp.asarray(rng.normal(size=(batch, height, width, channels)), dtype)
    w = jnp.asarray(rng.normal(size=(kernel, kernel, channels, out)) / np.sqrt(kernel * kernel * channels), dtype)
    padding = ((pad, pad), (pad, pad))
    dims = lax.conv_dimension_numbers(x.shape, w.shape, NHWC)

    def ours(x, w):  # the labelled lowering itself: not the dispatcher, which may pick lax on another backend
        if algorithm == "taps":
            return convolution.tap_conv(x, w, (stride, stride), padding)
        if algorithm == "im2col":
            return convolution.im2col_conv(x, w, (stride, stride), padding)
        return convolution.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=dims)

    def reference(x, w):  # float32 at full precision, on the same (rounded) inputs
        return lax.conv_general_dilated(x.astype(jnp.float32), w.astype(jnp.float32), (stride, stride), padding,
                                        dimension_numbers=dims, precision=lax.Precision.HIGHEST)

    return x, w, ours, reference


def _relative(a, b) -> float:
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    return float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-12))


# XLA's CPU libraries for a labelled lowering, as the compiler options that select them (`backend.conv_library`);
# jaxnets' own oneDNN handler is tested on every shape in tests/test_onednn.py.
LIBRARIES = {"eigen": {}, "xla-onednn": backend.ONEDNN_OPTIONS}
# Worst error allowed, relative to the largest value: float32 reassociation; bfloat16 outputs rounded once from a
# float32 accumulation (measured worst 0.8%, LeNet's im2col input gradient; jax 0.12's bfloat16 dots, which do
# not accumulate in float32, put a weight gradient 3.5% off before `convolution.matmul`).
TOLERANCE = {"float32": 1e-4, "bfloat16": 1e-2}


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("dtype", TOLERANCE)
@pytest.mark.parametrize("name, shape", CONV_SHAPES.items(), ids=CONV_SHAPES.keys())
def test_cpu_path_equals_lax_forward_and_gradients(name, shape, dtype, library, monkeypatch):
    """Each labelled lowering, in each dtype and XLA CPU library, equals float32 lax: forward and both gradients.

    The `xla-onednn` library compiles with XLA's oneDNN options whatever this
    jaxlib does with them (jax 0.12 lowers to oneDNN calls; jax 0.10.2 keeps
    Eigen), so it is checked wherever it can be taken. `JAXNETS_CPU_CONV=eigen`
    keeps the 'lax' shapes in XLA (not jaxnets' oneDNN handler).
    """
    monkeypatch.setenv(backend.ENV_VAR, "eigen")
    algorithm = _labelled_algorithm(name)
    x, w, ours, reference = _conv_pair(shape, algorithm, jnp.dtype(dtype))
    program = str(jax.make_jaxpr(ours)(x, w))
    assert ("conv_general_dilated" in program) == (algorithm == "lax"), program  # the labelled path was taken

    def ours_vjp(x, w, cotangent):  # forward, input and weight gradients in one compile
        y, vjp = jax.vjp(ours, x, w)
        return (y, *vjp(cotangent.astype(y.dtype)))

    def reference_vjp(x, w, cotangent):
        y, vjp = jax.vjp(reference, x, w)
        return (y, *vjp(cotangent))

    cotangent = jnp.asarray(np.random.default_rng(7).normal(size=jax.eval_shape(reference, x, w).shape), jnp.float32)
    cotangent = cotangent.astype(dtype).astype(jnp.float32)  # the same rounded values for both
    got = jax.jit(ours_vjp, compiler_options=LIBRARIES[library])(x, w, cotangent)
    want = jax.jit(reference_vjp)(x, w, cotangent)
    for a, b, what in zip(got, want, ("forward", "input gradient", "weight gradient"), strict=True):
        assert a.dtype == jnp.dtype(dtype), what
        assert _relative(a, b) < TOLERANCE[dtype], what


def _fake_works(*working: str):
    return lambda library, dtype_name: library in ("eigen", *working)


BOTH = ("onednn", "xla-onednn")


@pytest.mark.parametrize("dtype, flags, working, setting, platform, want", [
    ("bfloat16", {"avx512_bf16"}, BOTH, "fast", "cpu", "onednn"),
    ("bfloat16", {"amx_bf16", "amx_tile"}, BOTH, "fast", "cpu", "onednn"),
    ("bfloat16", {"avx512_bf16"}, ("xla-onednn",), "fast", "cpu", "xla-onednn"),  # jaxnets' handler not built
    ("bfloat16", {"avx512_bf16"}, (), "fast", "cpu", "eigen"),  # neither (jax 0.10.2 without the handler)
    ("bfloat16", {"avx2", "avx512f"}, BOTH, "fast", "cpu", "eigen"),  # no bf16 dot instructions
    ("float32", {"avx2", "avx512f"}, BOTH, "fast", "cpu", "onednn"),
    ("float32", {"avx2", "avx512f"}, ("xla-onednn",), "fast", "cpu", "eigen"),  # XLA's oneDNN float32 lost
    ("float32", {"avx2"}, BOTH, "fast", "cpu", "onednn"),  # AVX2-only CPUs: convolutions in oneDNN too
    ("float32", {"sse4_2"}, BOTH, "fast", "cpu", "eigen"),  # below AVX2: unmeasured, XLA's own
    ("float32", {"avx2"}, (), "fast", "cpu", "eigen"),  # the handler does not build (or cannot compute float32)
    ("bfloat16", {"avx2"}, BOTH, "fast", "cpu", "eigen"),  # no bfloat16 in oneDNN below AVX-512
    ("float64", {"avx512f", "avx512_bf16"}, BOTH, "fast", "cpu", "eigen"),
    ("bfloat16", {"avx512_bf16"}, BOTH, "eigen", "cpu", "eigen"),  # JAXNETS_CPU_CONV=eigen: never oneDNN
    ("float32", {"avx512f"}, BOTH, "xla", "cpu", "xla"),  # switched off: XLA's defaults
    ("bfloat16", {"avx512_bf16"}, BOTH, "fast", "gpu", "xla"),  # GPU/TPU: the backend decides
])
def test_conv_library_rules(dtype, flags, working, setting, platform, want, monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, setting)
    assert backend.conv_library(dtype, platform, flags=frozenset(flags), works=_fake_works(*working)) == want


@pytest.mark.parametrize("flags, in_channels, strides, batch, want", [
    ({"avx2"}, 64, (1, 1), 32, "eigen"),  # AVX2: wide stride-1 convolutions at batch <= 64 (VGG-16's, ResNet's) Eigen
    ({"avx2"}, 512, (1, 1), 8, "eigen"),
    ({"avx2"}, 64, (1, 1), 64, "eigen"),
    ({"avx2"}, 64, (1, 1), 65, "onednn"),  # larger batches: oneDNN (ResNet-18 at batch 128 was as fast or faster so)
    ({"avx2"}, 64, (2, 2), 32, "onednn"),  # strided (ResNet-18's downsampling): oneDNN
    ({"avx2"}, 32, (1, 1), 32, "onednn"),  # thin (LeNet's, the 3-channel stems): oneDNN
    ({"avx2"}, None, None, None, "onednn"),  # no convolution named: the dtype's library
    ({"avx2", "avx512f"}, 512, (1, 1), 8, "onednn"),  # AVX-512's row takes every convolution
])
def test_a_rule_keeps_wide_stride_1_convolutions_of_small_batches_in_eigen(flags, in_channels, strides, batch, want,
                                                                           monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "fast")
    rule = backend.conv_rule("float32", flags=frozenset(flags), works=_fake_works(*BOTH))
    assert (rule.eigen_from_channels, rule.eigen_max_batch) == ((64, 64) if flags == {"avx2"} else (None, None))
    assert backend.conv_library("float32", "cpu", flags=frozenset(flags), works=_fake_works(*BOTH),
                                in_channels=in_channels, strides=strides, batch=batch) == want


def test_conv_algorithm_asks_the_rule_with_the_convolutions_channels_and_strides(monkeypatch):
    """On an AVX2-only CPU's rule at batch 8: VGG's 3x3 64->64 stays XLA's, ResNet's strided 64->128 and LeNet's
    1->6 go to oneDNN; at batch 128 the 64->64 does too."""
    monkeypatch.setenv(backend.ENV_VAR, "fast")
    asked, conv_library = [], backend.conv_library

    def library(dtype, platform=None, **conv):
        asked.append(conv)
        return conv_library(dtype, platform, flags=frozenset({"avx2"}), works=_fake_works(*BOTH), **conv)

    monkeypatch.setattr(backend, "conv_library", library)
    pad = ((1, 1), (1, 1))
    assert convolution.conv_algorithm("cpu", (8, 32, 32, 64), (3, 3, 64, 64), (1, 1), pad, None, None, 1,
                                      dtype="float32") == "lax"
    assert convolution.conv_algorithm("cpu", (8, 32, 32, 64), (3, 3, 64, 128), (2, 2), pad, None, None, 1,
                                      dtype="float32") == "onednn"
    assert convolution.conv_algorithm("cpu", (8, 28, 28, 1), (3, 3, 1, 6), (1, 1), pad, None, None, 1,
                                      dtype="float32") == "onednn"
    assert convolution.conv_algorithm("cpu", (128, 32, 32, 64), (3, 3, 64, 64), (1, 1), pad, None, None, 1,
                                      dtype="float32") == "onednn"
    assert asked == [{"in_channels": 64, "strides": (1, 1), "batch": 8}, {"in_channels": 64, "strides": (2, 2),
                     "batch": 8}, {"in_channels": 1, "strides": (1, 1), "batch": 8},
                     {"in_channels": 64, "strides": (1, 1), "batch": 128}]


@pytest.mark.parametrize("dtype, flags, working, setting, want", [
    ("float32", {"avx2", "avx512f"}, BOTH, "fast", True),  # AVX-512: oneDNN's batch norm measured to win
    ("float32", {"avx2"}, BOTH, "fast", False),  # AVX2: the convolutions go to oneDNN, batch norm stays in XLA
    ("bfloat16", {"avx512_bf16"}, BOTH, "fast", True),
    ("bfloat16", {"avx512_bf16"}, ("xla-onednn",), "fast", False),  # XLA's oneDNN has no batch norm of ours
    ("float32", {"avx512f"}, BOTH, "eigen", False),
    ("float32", {"avx512f"}, BOTH, "xla", False),
])
def test_batch_norm_follows_its_conv_rule(dtype, flags, working, setting, want, monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, setting)
    assert backend.batch_norm_in_onednn(dtype, "cpu", flags=frozenset(flags), works=_fake_works(*working)) == want
    assert not backend.batch_norm_in_onednn(dtype, "gpu", flags=frozenset(flags), works=_fake_works(*working))


def _on_x86_linux() -> bool:
    import platform

    return sys.platform == "linux" and platform.machine() == "x86_64"


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_conv_library_on_this_machine_is_what_the_program_runs(dtype):
    """On this CPU and jaxlib: a `backend.jit` program has the oneDNN calls of exactly the library the rules pick."""
    x = jnp.ones((2, 8, 8, 16), dtype)
    w = jnp.ones((3, 3, 16, 16), dtype)

    def loss(x, w):
        y = convolution.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                             dimension_numbers=lax.conv_dimension_numbers(x.shape, w.shape, NHWC))
        return jnp.sum(y.astype(jnp.float32))

    library = backend.conv_library(dtype)
    if _on_x86_linux() and {"avx2", "avx512f"} & backend.cpu_flags() and dtype == jnp.float32:
        # jaxnets' dependencies and a compiler are here (CI's machines too): the handler must build and be taken
        assert backend.onednn_handler_problem() is None
        assert library == "onednn"
    text = backend.jit(jax.grad(loss, argnums=(0, 1)), dtype=dtype).lower(x, w).compile().as_text()
    assert ("jaxnets_onednn_convolution" in text) == (library == "onednn"), library
    assert (backend.ONEDNN_CALL in text) == (library == "xla-onednn"), library
    if library != "xla-onednn":
        assert backend.ONEDNN_OPTIONS.keys().isdisjoint(backend.compiler_options("cpu", dtype))


def test_describe_names_the_cpu_flags_each_dtypes_library_and_onednn():
    described = backend.describe()
    for dtype in ("float32", "bfloat16"):
        assert f"{dtype}: {backend.conv_library(dtype)}" in described["conv_library"]
    assert ("avx512_bf16" in described["cpu_flags"]) == ("avx512_bf16" in backend.cpu_flags())
    problem = backend.onednn_handler_problem()
    assert described["onednn"].startswith("oneDNN 3.") if problem is None else problem.splitlines()[0] in described[
        "onednn"]


def test_describe_names_a_rules_exception(monkeypatch):
    """On an AVX2-only CPU the float32 line says which convolutions stay in Eigen (what the bench prints)."""
    monkeypatch.setenv(backend.ENV_VAR, "fast")
    monkeypatch.setattr(backend, "cpu_flags", lambda: frozenset({"avx2"}))
    monkeypatch.setattr(backend, "library_works", _fake_works(*BOTH))
    described = backend.describe()["conv_library"]
    assert described.startswith("float32: onednn (eigen for stride-1 convolutions of >= 64 channels at batch <= 64)")
    assert described.endswith("bfloat16: eigen")


def test_serializable_block_keeps_jaxnets_custom_calls_out(monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "fast")
    with backend.serializable():
        assert backend.conv_library("float32", "cpu", flags=frozenset({"avx512f"})) == "eigen"
    assert not backend._status["serializable"]


@pytest.mark.parametrize("name, shape", CONV_SHAPES.items(), ids=CONV_SHAPES.keys())
def test_algorithm_choice(name, shape, monkeypatch):
    """On the CPU with the path on, each labelled shape takes its labelled lowering; GPU and TPU always lax."""
    monkeypatch.setenv(backend.ENV_VAR, "fast")  # whatever the suite runs with
    batch, height, width, channels, out, kernel, stride, pad = shape
    args = ((batch, height, width, channels), (kernel, kernel, channels, out), (stride, stride),
            ((pad, pad), (pad, pad)), None, None, 1)
    assert convolution.conv_algorithm("cpu", *args) == _labelled_algorithm(name)
    # GPU and TPU always keep lax (cuDNN / the TPU compiler decide there)
    assert convolution.conv_algorithm("gpu", *args) == "lax"
    assert convolution.conv_algorithm("tpu", *args) == "lax"


@pytest.mark.parametrize("dtype, input_shape, kernel_shape, padding, want", [
    ("float32", (8, 16, 16, 64), (3, 3, 64, 64), ((1, 1), (1, 1)), "onednn"),
    ("bfloat16", (8, 16, 16, 64), (3, 3, 64, 64), ((1, 1), (1, 1)), "onednn"),
    ("float32", (8, 28, 28, 1), (3, 3, 1, 6), ((1, 1), (1, 1)), "onednn"),  # LeNet's thin 3x3: oneDNN beats im2col
    ("float32", (8, 2, 2, 512), (3, 3, 512, 512), ((1, 1), (1, 1)), "taps"),  # tiny maps: a matmul per tap
    ("bfloat16", (8, 2, 2, 512), (3, 3, 512, 512), ((1, 1), (1, 1)), "taps"),
    ("float64", (8, 16, 16, 64), (3, 3, 64, 64), ((1, 1), (1, 1)), "lax"),  # oneDNN has no float64
    ("float32", (8, 16, 16, 64), (3, 3, 64, 64), ((-1, 1), (1, 1)), "lax"),  # negative padding: XLA's
])
def test_algorithm_choice_where_onednn_runs(dtype, input_shape, kernel_shape, padding, want, monkeypatch):
    """Given a dtype whose library is jaxnets' oneDNN: which convolutions take it (`conv_algorithm`)."""
    monkeypatch.setenv(backend.ENV_VAR, "fast")
    monkeypatch.setattr(backend, "conv_library", lambda dtype, platform=None, **_: "onednn")
    args = (input_shape, kernel_shape, (1, 1), padding, None, None, 1)
    assert convolution.conv_algorithm("cpu", *args, dtype=dtype) == want
    assert convolution.conv_algorithm("cpu", input_shape, kernel_shape, (1, 1), padding, None, (2, 2), 1,
                                      dtype=dtype) == "lax"  # dilated: XLA's
    assert convolution.conv_algorithm("gpu", *args, dtype=dtype) == "lax"


def test_switch_off_and_bad_setting(monkeypatch):
    args = ((1, 2, 2, 8), (3, 3, 8, 8), (1, 1), ((1, 1), (1, 1)), None, None, 1)
    monkeypatch.setenv(backend.ENV_VAR, "xla")
    assert convolution.conv_algorithm("cpu", *args) == "lax"
    assert backend.compiler_options("cpu") == {}
    monkeypatch.setenv(backend.ENV_VAR, "fastest")
    with pytest.raises(ValueError, match="JAXNETS_CPU_CONV"):
        backend.cpu_path_setting()
    monkeypatch.setenv(backend.ENV_VAR, "fast")
    assert convolution.conv_algorithm("cpu", *args) == "taps"


def test_tap_conv_refuses_a_window_with_no_output_pixel():
    with pytest.raises(ValueError, match="does not fit a 2x2 map"):
        convolution.tap_conv(jnp.zeros((1, 2, 2, 4)), jnp.zeros((3, 3, 4, 4)), (1, 1), ((0, 0), (0, 0)))


def test_models_route_tiny_maps_through_matmuls(monkeypatch):
    """VGG's 2x2-map convs become dot_generals; its larger maps stay convolutions (XLA's, with oneDNN off)."""
    monkeypatch.setenv(backend.ENV_VAR, "eigen")
    model = models.create("vgg11")
    variables = jax.eval_shape(lambda: models.init(model, jax.random.key(0)))
    jaxpr = str(jax.make_jaxpr(lambda v, x: model.apply(v, x))(variables, jnp.zeros((2, 32, 32, 3))))
    # vgg11 has 8 convs; the last two see 2x2 maps
    assert jaxpr.count("conv_general_dilated") == 6
    conv = layers.Conv(4, (3, 3), padding=1)
    small = jnp.zeros((1, 2, 2, 3))
    jaxpr = str(jax.make_jaxpr(lambda x: conv.apply(conv.init(jax.random.key(0), x), x))(small))
    assert "conv_general_dilated" not in jaxpr and "dot_general" in jaxpr


def test_conv_module_matches_flax_conv_with_the_path_on():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 2, 2, 16)), jnp.float32)
    ours = layers.Conv(8, (3, 3), padding=1)
    plain = nn.Conv(8, (3, 3), padding=1)
    variables = ours.init(jax.random.key(0), x)
    assert _relative(ours.apply(variables, x), plain.apply(variables, x)) < 1e-5


@pytest.mark.parametrize(
    "flags, setting, knows, started, changed",
    [
        ("", "fast", True, False, True),
        ("--xla_force_host_platform_device_count=4", "fast", True, False, True),  # merged, not overwritten
        (f"--{backend.YNN_OPTION}=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT", "fast", True, False, False),  # the user's
        ("", "xla", True, False, False),  # switched off
        ("", "fast", False, False, False),  # a jaxlib without the option: never abort on an unknown flag
        ("", "fast", True, True, False),  # too late for XLA_FLAGS: per-jit options instead
    ],
)
def test_plan_xla_flags(flags, setting, knows, started, changed):
    new, reason = backend.plan_xla_flags(flags, setting, knows, started)
    assert (new != flags) == changed, reason
    if changed:
        assert new.startswith(flags) and new.endswith(backend.YNN_FLAG)


def _start_python(code: str, **env) -> subprocess.Popen:
    environment = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", backend.ENV_VAR)}
    environment.update(env)
    return subprocess.Popen([sys.executable, "-c", code], env=environment, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _result(process: subprocess.Popen) -> dict:
    out, err = process.communicate()
    assert process.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def _run_python(code: str, **env) -> dict:
    return _result(_start_python(code, **env))


_YNN_PROBE = """
import json, os, jax, jax.numpy as jnp
from jax import lax
{imports}
x, w = jnp.ones((32, 32, 32, 64)), jnp.ones((3, 3, 64, 64))
loss = lambda w: lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')).sum()
{make}
hlo = step.lower(w).compile().as_text()
print(json.dumps({{"ynn_calls": hlo.count("__ynn"), "flags": os.environ.get("XLA_FLAGS", "")}}))
"""


def test_import_keeps_convolutions_out_of_ynnpack():
    """The weight-gradient conv of a ResNet stage compiles without YNNPACK once jaxnets is imported."""
    make = "step = jax.jit(jax.grad(loss))"
    started = [  # four fresh processes, started together: each is mostly Python imports
        _start_python(_YNN_PROBE.format(imports="", make=make)),
        _start_python(_YNN_PROBE.format(imports="import jaxnets", make=make)),
        _start_python(_YNN_PROBE.format(imports="import jaxnets", make=make),
                      XLA_FLAGS="--xla_cpu_use_thunk_runtime=true"),
        _start_python(_YNN_PROBE.format(imports="import jaxnets", make=make), JAXNETS_CPU_CONV="xla"),
    ]
    plain, ours, user, off = (_result(p) for p in started)
    assert ours["ynn_calls"] == 0 and backend.YNN_FLAG in ours["flags"]
    assert user["ynn_calls"] == 0 and user["flags"].startswith("--xla_cpu_use_thunk_runtime=true ")
    assert off["flags"] == "" and off["ynn_calls"] == plain["ynn_calls"]
    if plain["ynn_calls"] == 0:
        pytest.skip("this jaxlib does not send convolutions to YNNPACK by default; nothing to undo")


def test_late_import_uses_per_jit_compiler_options():
    """JAX started before jaxnets: XLA_FLAGS is too late, so jaxnets' own jits carry the option."""
    probe = _YNN_PROBE.format(
        imports="jnp.zeros(1).block_until_ready()\nimport jaxnets\nfrom jaxnets import backend",
        make="step = backend.jit(jax.grad(loss))")
    late = _run_python(probe)
    assert backend.YNN_FLAG not in late["flags"]
    assert late["ynn_calls"] == 0


def test_child_environment_restores_the_users_flags(monkeypatch):
    """A child asked to use XLA's defaults must not inherit the flag jaxnets added here (bench's jit-xla)."""
    monkeypatch.setitem(backend._status, "user_flags", "--xla_cpu_use_thunk_runtime=true")
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_thunk_runtime=true " + backend.YNN_FLAG)
    env = backend.child_environment("xla")
    assert env["XLA_FLAGS"] == "--xla_cpu_use_thunk_runtime=true" and env[backend.ENV_VAR] == "xla"
    monkeypatch.setitem(backend._status, "user_flags", "")
    assert "XLA_FLAGS" not in backend.child_environment("fast")


@pytest.mark.parametrize("setting", ["fast", "eigen"])  # with oneDNN where this CPU takes it, and without
@pytest.mark.parametrize("name", ["resnet18", "vgg11_bn"])
def test_bfloat16_jitted_forward_equals_eager(name, setting, monkeypatch):
    """A jitted bfloat16 forward pass (what evaluation runs) equals the eager one, finite.

    jax 0.12's YNNPACK reductions returned NaN here (all 40 logits; the global
    average pool fused with its bfloat16 -> float32 convert), in every CPU
    library; `backend.compiler_options` keeps reductions out of YNNPACK in
    16-bit programs (`YNN_ONLY_DOTS`).
    """
    monkeypatch.setenv(backend.ENV_VAR, setting)
    model = models.create(name, dtype=jnp.bfloat16, width_divisor=8)
    variables = models.init(model, jax.random.key(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, *model.input_shape)), jnp.float32)
    jitted = backend.jit(lambda v, x: model.apply(v, x, train=False), dtype=jnp.bfloat16)(variables, x)
    eager = model.apply(variables, x, train=False)
    assert bool(jnp.all(jnp.isfinite(jitted))), "the jitted bfloat16 forward pass returned non-finite logits"
    assert _relative(jitted, eager) < 2e-2


def test_sixteen_bit_programs_keep_only_dots_in_ynnpack():
    if not backend._jaxlib_knows(backend.YNN_OPTION):
        assert backend.compiler_options("cpu", jnp.bfloat16).get(backend.YNN_OPTION) is None
        return
    assert backend.compiler_options("cpu", jnp.bfloat16)[backend.YNN_OPTION] == backend.YNN_ONLY_DOTS
    assert backend.compiler_options("cpu", jnp.float16)[backend.YNN_OPTION] == backend.YNN_ONLY_DOTS
    assert backend.YNN_OPTION not in backend.compiler_options("cpu", jnp.float32)


def test_users_own_ynn_flag_is_not_overridden_per_jit(monkeypatch):
    monkeypatch.setitem(backend._status, "user_flags", f"--{backend.YNN_OPTION}=")
    assert backend.YNN_OPTION not in backend.compiler_options("cpu", jnp.bfloat16)


def test_conv_as_matmul_keeps_float64():
    """Only 16-bit floats are multiplied in float32: float64 convolutions stay float64 (the parity tests use it)."""
    with jax.enable_x64(True):
        a = jnp.asarray(np.random.default_rng(0).normal(size=(3, 5)), jnp.float64)
        b = jnp.asarray(np.random.default_rng(1).normal(size=(5, 2)), jnp.float64)
        got = convolution.matmul(a, b)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(got), np.asarray(a) @ np.asarray(b), rtol=1e-14)
        assert backend.YNN_OPTION not in backend.compiler_options("cpu", jnp.float64)


@pytest.mark.parametrize("dtype, flags, working, version, setting, want", [
    ("bfloat16", {"avx512_bf16"}, BOTH, (0, 10, 2), "fast", True),  # jax 0.10: XLA's bfloat16 dots are float32 ones
    ("bfloat16", {"amx_bf16"}, BOTH, (0, 10, 2), "fast", True),
    ("bfloat16", {"avx512_bf16"}, BOTH, (0, 12, 1), "fast", False),  # jax 0.12's own bfloat16 dots win the step
    ("bfloat16", {"avx512_bf16"}, ("xla-onednn",), (0, 10, 2), "fast", False),  # no handler of ours
    ("float32", {"avx512f"}, BOTH, (0, 10, 2), "fast", False),  # float32 dots: XLA's are as fast
    ("bfloat16", {"avx512_bf16"}, BOTH, (0, 10, 2), "eigen", False),
    ("bfloat16", {"avx512_bf16"}, BOTH, (0, 10, 2), "xla", False),
])
def test_dense_follows_its_rule_and_the_jax_version(dtype, flags, working, version, setting, want, monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, setting)
    monkeypatch.setattr(backend, "jax_version", lambda: version)
    assert backend.dense_in_onednn(dtype, "cpu", flags=frozenset(flags), works=_fake_works(*working)) == want
    assert not backend.dense_in_onednn(dtype, "gpu", flags=frozenset(flags), works=_fake_works(*working))


def test_jax_version_reads_the_running_release():
    assert backend.jax_version() == tuple(int(p) for p in jax.__version__.split(".")[:3])
    assert backend.jax_version() >= (0, 10, 2)
