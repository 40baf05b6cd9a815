"""How jaxnets runs convolutions on the CPU: one switch, one place.

XLA:CPU hands every large enough convolution to the YNNPACK library (the
`INDIVIDUAL_CONVOLUTION` member of the XLA option
`xla_cpu_experimental_ynn_fusion_type`, in jaxlib 0.10 to 0.12). YNNPACK's
training convolutions are slow: a weight-gradient convolution of
ResNet-18's first stage runs many times slower there than in XLA's own
Eigen convolution (BENCHMARKS.md has the layer and the whole step, `jit`
vs `jit-xla`). jaxnets therefore, on the CPU only:

1. asks XLA to keep convolutions out of YNNPACK (dots and reductions stay
   there), process-wide, by appending
   `--xla_cpu_experimental_ynn_fusion_type=-individual_convolution` to
   `XLA_FLAGS`. The `-name` form removes one member from *this jaxlib's own
   default*, so nothing of one release's defaults is hard-coded. It is added
   only when (a) the user's `XLA_FLAGS` does not already set that option,
   (b) this jaxlib knows the option, and (c) the CPU backend has not started
   yet (XLA reads `XLA_FLAGS` once). It covers eager and jit alike. If JAX
   had already started when jaxnets was imported, the same choice is passed
   to jaxnets' own `jit`s instead (`compiler_options()`); eager ops then keep
   XLA's defaults.
2. lowers some convolutions itself (`jaxnets.convolution`: maps smaller than
   the kernel window as one matmul per kernel tap, thin 3x3 kernels as im2col).

On GPU and TPU nothing changes: cuDNN / the TPU compiler stay in charge.

What happens at import: `import jaxnets` calls `configure()`, the only work
jaxnets does at import, because it must happen before JAX's backend starts:
it reads `JAXNETS_CPU_CONV` and `XLA_FLAGS`, asks whether the backend has
started, looks for the option's name in jaxlib's shared libraries (an
unknown flag in `XLA_FLAGS` would abort the process; a few milliseconds,
once) and appends the flag. Nothing else runs at import.

3. runs convolutions and training-mode batch normalisation in oneDNN where
   that was measured to win (`conv_library`, `batch_norm_in_onednn`,
   `CONV_RULES`): float32 convolutions on AVX-512 and AVX2 CPUs (batch norm
   on AVX-512 only), bfloat16 on CPUs with bfloat16 dot instructions
   (`avx512_bf16` or AMX). First choice is jaxnets' own oneDNN handler
   (`jaxnets.onednn`: forward, backward-data and backward-weights
   convolutions and batch norm as XLA custom calls, built once per machine;
   any jax version); where it cannot be built, bfloat16 falls back to XLA's
   own oneDNN rewrite (`'xla-onednn'`: per jit, through the compiler options
   `xla_cpu_use_onednn` + `xla_cpu_experimental_onednn_custom_call`; jax
   0.12 only, forward-shaped convolutions only). One small compile per
   process checks that a jaxlib really lowers to oneDNN. The measurements
   behind each rule are in BENCHMARKS.md.

Turn all of it off with the environment variable `JAXNETS_CPU_CONV=xla`
(set before importing jaxnets) to compare against XLA's defaults;
`JAXNETS_CPU_CONV=fast` (the default) turns it on, `JAXNETS_CPU_CONV=eigen`
keeps 1 and 2 but never oneDNN. With several JAX devices jaxnets' own
handler stays out (XLA cannot shard a custom call); `serializable()` keeps it
out of programs that are saved (`jaxnets.export`). `portable()` turns the
CPU-only lowerings off for one block of code (static-graph export for
several platforms must not bake a CPU-only choice into a GPU/TPU program).
The persistent compilation cache is `jaxnets.compile_cache`.
"""
from __future__ import annotations

import contextlib
import functools
import mmap
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxnets import compile_cache, host_memory
from jaxnets.env_choice import env_choice

ENV_VAR = "JAXNETS_CPU_CONV"
CHOICES = ("fast", "eigen", "xla")
YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
# Process-wide form: remove convolutions from this jaxlib's default set.
YNN_FLAG = f"--{YNN_OPTION}=-individual_convolution"
# Per-jit form (compiler options take full enum names, no +/-): used only when
# JAX started before jaxnets was imported, so the process-wide flag came too late.
YNN_WITHOUT_CONVOLUTIONS = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
# Per-jit form for programs computing in bfloat16/float16: dots only. jax 0.12's YNNPACK reductions of a
# converted bfloat16 input returned NaN in jitted ResNet-18 and VGG-11-BN bfloat16 forward passes (the global
# average pool before the classifier; eager and jax 0.10.2 were right): XLA's own reductions are used there.
YNN_ONLY_DOTS = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"

# What `configure()` did at import, for `describe()` and the tests; `user_flags` is XLA_FLAGS as the user set it.
_status: dict[str, Any] = {"flag": "not tried", "user_flags": os.environ.get("XLA_FLAGS", ""), "portable": 0,
                           "serializable": 0}


def cpu_path_setting(environ: dict | None = None) -> str:
    """`'fast'` (jaxnets' CPU path), `'eigen'` (the same, never oneDNN) or `'xla'` (XLA's defaults).

    Read from `JAXNETS_CPU_CONV`.

    Raises:
      ValueError: the variable holds something else.
    """
    return env_choice(ENV_VAR, CHOICES, "'xla' keeps XLA's default CPU convolutions", environ)


@functools.cache
def _jaxlib_knows(option: str) -> bool:
    """Whether this jaxlib's XLA defines `option` (an unknown flag in XLA_FLAGS aborts the process)."""
    try:
        import jaxlib

        folder = Path(jaxlib.__file__).parent
    except (ImportError, TypeError):
        return False
    needle = option.encode()
    for library in sorted(folder.glob("*.so"), key=lambda p: -p.stat().st_size)[:3]:
        try:
            with open(library, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                if m.find(needle) >= 0:
                    return True
        except (OSError, ValueError):
            continue
    return False


def backend_started() -> bool:
    """Whether JAX's backend has started (then XLA has read `XLA_FLAGS` already).

    Asks JAX's private `xla_bridge` (jax 0.10 to 0.12 have `backends_are_initialized`);
    when that API has moved, assumes the worst: the per-jit compiler options still apply then.
    """
    try:
        from jax._src import xla_bridge
    except ImportError:
        return True
    probe = getattr(xla_bridge, "backends_are_initialized", None)
    if callable(probe):
        return bool(probe())
    backends = getattr(xla_bridge, "_backends", None)
    return True if backends is None else bool(backends)


def plan_xla_flags(xla_flags: str, setting: str, knows_option: bool, backend_started: bool) -> tuple[str, str]:
    """Decide what `XLA_FLAGS` should become. Pure, so the decision can be tested.

    Returns:
      (new XLA_FLAGS value, reason): the value is `xla_flags` unchanged unless
      the flag is to be added (merged after the user's own flags).
    """
    if setting == "xla":
        return xla_flags, f"off ({ENV_VAR}={setting})"
    if YNN_OPTION in xla_flags:
        return xla_flags, "left to the user's XLA_FLAGS"
    if not knows_option:
        return xla_flags, "this jaxlib has no YNNPACK convolution option"
    if backend_started:
        return xla_flags, "JAX started before jaxnets was imported: per-jit compiler options instead"
    return (xla_flags + " " + YNN_FLAG).strip(), "set in XLA_FLAGS"


def configure() -> str:
    """Apply the process-wide part at import (see the module docstring). Returns the reason."""
    try:
        setting = cpu_path_setting()
    except ValueError:
        setting = "xla"  # reported again, as an error, when a model is built
    flags, reason = plan_xla_flags(os.environ.get("XLA_FLAGS", ""), setting, _jaxlib_knows(YNN_OPTION),
                                   backend_started())
    if flags != os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = flags
    _status["flag"] = reason
    return reason


def fast_cpu_path(backend: str | None = None) -> bool:
    """Whether jaxnets' CPU convolution path applies: the backend is CPU and it is not switched off."""
    if _status["portable"]:
        return False
    backend = jax.default_backend() if backend is None else backend
    return backend == "cpu" and cpu_path_setting() != "xla"


@contextlib.contextmanager
def portable() -> Iterator[None]:
    """Inside this block, trace models with the lowering every platform shares (no CPU-only choices).

    `fast_cpu_path()` is False here, so `jaxnets.layers` traces every
    convolution as `lax.conv_general_dilated`. For programs traced here and
    lowered for platforms other than (or besides) the CPU, e.g. by
    `jaxnets.export.save(..., platforms=('cpu', 'cuda'))`. Process-wide, not
    per thread: do not train in another thread meanwhile.
    """
    _status["portable"] += 1
    try:
        yield
    finally:
        _status["portable"] -= 1


@contextlib.contextmanager
def serializable() -> Iterator[None]:
    """Inside this block, trace models without jaxnets' own custom calls (`jaxnets.onednn`).

    For programs that are serialized (`jaxnets.export`): a loaded program
    cannot count on jaxnets' handlers being registered where it runs, and
    `jax.export` refuses custom calls it does not know. The other CPU
    lowerings (plain XLA operations) stay. Process-wide, like `portable()`.
    """
    _status["serializable"] += 1
    try:
        yield
    finally:
        _status["serializable"] -= 1


def compiler_options(backend: str | None = None, dtype=None) -> dict[str, Any]:
    """XLA compiler options for a jaxnets `jit` whose convolutions compute in `dtype` (default float32).

    Empty in the usual float32 case. Holds the YNNPACK option when the
    process-wide flag came too late (JAX started before jaxnets) or the
    program computes in a 16-bit float (YNNPACK then keeps only dots:
    `YNN_ONLY_DOTS`; not when the user's own `XLA_FLAGS` set that option), and
    XLA's oneDNN options when `conv_library(dtype)` is `'xla-onednn'`.
    """
    # Status first: in the usual case this returns without starting JAX's backend.
    late = _status["flag"].startswith("JAX started")
    low_precision = dtype is not None and jnp.finfo(dtype).bits < 32  # bfloat16, float16
    if not late and not low_precision:
        return {}
    if not fast_cpu_path(backend):
        return {}
    options = {}
    if YNN_OPTION in _status["user_flags"]:
        pass  # the user's XLA_FLAGS chose YNNPACK's share themselves: theirs stands in every program
    elif low_precision and _jaxlib_knows(YNN_OPTION):
        options[YNN_OPTION] = YNN_ONLY_DOTS
    elif late:
        options[YNN_OPTION] = YNN_WITHOUT_CONVOLUTIONS
    if dtype is not None and conv_library(dtype, backend) == "xla-onednn":
        options.update(ONEDNN_OPTIONS)
        quiet_uncacheable_onednn()
    return options


# jaxlib cannot serialize a program holding oneDNN calls (std::bad_alloc), so JAX's persistent compilation
# cache skips it with this warning at every compile: such programs are compiled anew in each process.
UNCACHEABLE_WARNING = r"Error writing persistent compilation cache entry .*std::bad_alloc"


def quiet_uncacheable_onednn() -> None:
    """Silence JAX's warning that a oneDNN program could not be cached (`describe()` says it instead)."""
    warnings.filterwarnings("ignore", message=UNCACHEABLE_WARNING, category=UserWarning)


# Initialising a model is one program of random draws (threefry bits, uniform and truncated-normal transforms) that
# runs once. XLA's default LLVM optimisation spends 3-4x longer compiling it on the CPU than level 1, which gives
# bit-identical weights (BENCHMARKS.md "2026-12-07: issue 24 round 6", "Faster to start"; tests/test_models.py).
INIT_OPTIONS = {"xla_backend_optimization_level": 1}


def init_compiler_options(backend: str | None = None) -> dict[str, Any]:
    """XLA options for the jitted `models.init` program: `INIT_OPTIONS` on the CPU, none elsewhere.

    Only the CPU was measured (GPU kernels' compile is another code path).
    """
    backend = jax.default_backend() if backend is None else backend
    return dict(INIT_OPTIONS) if backend == "cpu" else {}


def jit(fun: Callable, *, dtype=None, **kwargs) -> Callable:
    """`jax.jit(fun, **kwargs)` with `compiler_options(dtype=dtype)`: every jaxnets jit goes through here.

    `dtype` is the compute dtype of the convolutions the program runs (a
    model's `dtype`); it picks their CPU library (`conv_library`).
    """
    options = compiler_options(dtype=dtype)
    if options:
        kwargs["compiler_options"] = {**options, **kwargs.get("compiler_options", {})}
    return jax.jit(fun, **kwargs)


# ------------------------------------------------------------- which library runs a convolution

ONEDNN_OPTIONS = {"xla_cpu_use_onednn": True, "xla_cpu_experimental_onednn_custom_call": True}
ONEDNN_CALL = "__onednn$convolution"


class ConvRule(NamedTuple):
    """One row of `CONV_RULES`: convolutions in `dtype` on a CPU with any of `cpu_flags` go to `library`.

    `batch_norm`: training-mode batch normalisation goes to jaxnets' oneDNN
    handler too (`batch_norm_in_onednn`); only where that was measured to win
    or tie, and only for `library == 'onednn'`. `dense`: so do dense layers'
    matrix products (`dense_in_onednn`), on the same terms, with jax versions
    below `dense_jax_below` only (None: every version): jax 0.10's XLA
    computes bfloat16 dots in float32 (converts around a float32 dot), jax
    0.12's natively, and faster in a whole step than the custom calls.
    `eigen_from_channels`, `eigen_max_batch`: stride-1 convolutions with at
    least `eigen_from_channels` input channels, in batches of at most
    `eigen_max_batch` (None: any batch), stay with XLA's own (`'eigen'`);
    `eigen_from_channels=None`: every convolution takes `library`. Where the library was measured to lose there.
    """

    dtype: str
    cpu_flags: tuple[str, ...]
    library: str
    measured: str  # where the measurement that chose this row is (BENCHMARKS.md section)
    batch_norm: bool = True
    dense: bool = False
    dense_jax_below: tuple[int, ...] | None = None
    eigen_from_channels: int | None = None
    eigen_max_batch: int | None = None


# First match wins; no match: 'eigen' (XLA's own convolution, out of YNNPACK). A row is only taken where its library
# really runs here (`library_works`: jaxnets' oneDNN handler built and loaded; this jaxlib lowering to oneDNN), so the
# table holds for every jax version and install.
CONV_RULES = (
    ConvRule("bfloat16", ("avx512_bf16", "amx_bf16"), "onednn",
             "2026-12-06 evening, Zen 4 (avx512_bf16): ResNet-18 bf16 3x3 conv + both gradients 4.8x Eigen; "
             "2026-12-07 round 9, Zen 4: MLP bf16 step with dense layers in oneDNN 0.68-0.72x the time on jax 0.10.2, "
             "1.10-1.28x on jax 0.12.1 (bench.interleaved)", dense=True, dense_jax_below=(0, 11)),
    ConvRule("float32", ("avx512f",), "onednn",
             "2026-12-06 evening, Zen 4 (avx512f): ResNet-18 fp32 3x3 conv + both gradients 2.3x Eigen"),
    # AVX2 without AVX-512: oneDNN's convolutions win, except the wide stride-1 ones at small batches (VGG-16's and
    # ResNet-18's blocks at batches up to 64: XLA's Eigen there); oneDNN's batch norm loses to XLA's.
    ConvRule("float32", ("avx2",), "onednn",
             "2026-12-07, Zen 3 (avx2): ResNet-18 fp32 step 4,041 -> 3,325 ms at batch 128, 864 -> 800 at 32; "
             "LeNet 11.0 -> 8.5 ms at 128; oneDNN batch norm 3,325 -> 3,471 ms; round 6 (bench.interleaved): wide "
             "stride-1 convolutions in Eigen at batch 32: VGG-16 0.87-0.90x, ResNet-18 0.91-0.99x the step time; "
             "at batch 128 ResNet-18 1.06-1.08x, then 0.92x and 1.01x (so not there); round 7: at batch 64 VGG-16 "
             "0.88-0.91x, ResNet-18 0.92-0.95x",
             batch_norm=False, eigen_from_channels=64, eigen_max_batch=64),
    ConvRule("bfloat16", ("avx512_bf16", "amx_bf16"), "xla-onednn",
             "2026-12-06 Zen 4 (avx512_bf16), jax 0.12: ResNet-18 bf16 train step 836 -> 570 ms at batch 32"),
)
LIBRARIES = ("onednn", "xla-onednn", "eigen", "xla")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux's /proc/cpuinfo names them (`avx512_bf16`, `amx_bf16`, ...).

    Empty where that file is missing (macOS, Windows): no rule of `CONV_RULES` applies there.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def onednn_lowers_convolutions(dtype_name: str) -> bool:
    """Whether this jaxlib, given `ONEDNN_OPTIONS`, lowers a `dtype_name` convolution's training work to oneDNN.

    Compiles one small convolution with its gradients (well under a second,
    once per process and dtype) and looks for `ONEDNN_CALL` in the program.
    """
    from jax import lax

    x = jnp.zeros((2, 8, 8, 16), dtype_name)
    w = jnp.zeros((3, 3, 16, 16), dtype_name)

    def loss(x, w):
        y = lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(y.astype(jnp.float32))

    try:
        compiled = jax.jit(jax.grad(loss, argnums=(0, 1)), compiler_options=ONEDNN_OPTIONS).lower(x, w).compile()
        return ONEDNN_CALL in compiled.as_text()
    except Exception:  # an option this jaxlib rejects: no oneDNN here
        return False


def onednn_handler_problem() -> str | None:
    """Why jaxnets' own oneDNN convolutions (`jaxnets.onednn`) cannot run in this process, or None when they can.

    They need the handler built and loaded (`jaxnets.onednn.build`) and one
    JAX device: a convolution sharded over several devices would be gathered
    onto each (XLA cannot split a custom call), so there XLA's own run.
    """
    from jaxnets import onednn

    reason = onednn.unavailable_reason()
    if reason is None and jax.device_count() > 1:
        reason = f"{jax.device_count()} JAX devices (XLA cannot shard a custom call)"
    return reason


def library_works(library: str, dtype_name: str) -> bool:
    """Whether `library` really runs `dtype_name` convolutions here (`'onednn'`, `'xla-onednn'`: checked once)."""
    if library == "onednn":
        from jaxnets import onednn

        return (not _status["serializable"] and onednn_handler_problem() is None
                and onednn.build.dtype_works(dtype_name))
    if library == "xla-onednn":
        return onednn_lowers_convolutions(dtype_name)
    return True


def conv_library(dtype, backend: str | None = None, *, flags: frozenset[str] | None = None,
                 works: Callable[[str, str], bool] | None = None, in_channels: int | None = None,
                 strides: tuple[int, ...] | None = None, batch: int | None = None) -> str:
    """Which library runs `dtype` convolutions in jaxnets: `'onednn'`, `'xla-onednn'`, `'eigen'` or `'xla'`.

    `'onednn'` is jaxnets' own oneDNN handler (`jaxnets.onednn`: forward and
    both gradients), `'xla-onednn'` XLA's (jax 0.12, via compiler options),
    `'eigen'` XLA's own convolution, `'xla'` XLA's defaults (not the CPU, or
    `JAXNETS_CPU_CONV=xla`). Else the first `CONV_RULES` row for this dtype
    whose CPU flag this CPU has and whose library really runs here
    (`library_works`), or `'eigen'`. Given one convolution's `in_channels`,
    `strides` and `batch`, a row's `eigen_from_channels` / `eigen_max_batch`
    may keep it in `'eigen'`. `flags` and `works` replace the CPU's flags and
    that check (for tests).
    """
    if not fast_cpu_path(backend):
        return "xla"
    rule = conv_rule(dtype, flags=flags, works=works)
    if rule is None:
        return "eigen"
    if (rule.eigen_from_channels is not None and None not in (in_channels, strides, batch)
            and in_channels >= rule.eigen_from_channels and all(s == 1 for s in strides)
            and (rule.eigen_max_batch is None or batch <= rule.eigen_max_batch)):
        return "eigen"
    return rule.library


def conv_rule(dtype, *, flags: frozenset[str] | None = None,
              works: Callable[[str, str], bool] | None = None) -> ConvRule | None:
    """The `CONV_RULES` row that `conv_library` takes for `dtype` on this CPU (None: XLA's own convolution).

    None also with `JAXNETS_CPU_CONV=eigen`. Does not ask the backend
    (`conv_library` does); `flags` and `works` as there.
    """
    if cpu_path_setting() == "eigen":
        return None
    name = jnp.dtype(dtype).name
    flags = cpu_flags() if flags is None else flags
    works = library_works if works is None else works
    for rule in CONV_RULES:
        if rule.dtype == name and flags & set(rule.cpu_flags) and works(rule.library, name):
            return rule
    return None


def batch_norm_in_onednn(dtype, backend: str | None = None, *, flags: frozenset[str] | None = None,
                         works: Callable[[str, str], bool] | None = None) -> bool:
    """Whether training-mode batch norm in `dtype` runs in jaxnets' oneDNN handler (`jaxnets.layers.BatchNorm`).

    Where `dtype`'s convolutions do (`conv_library(...) == 'onednn'`) and that
    `CONV_RULES` row says so (`ConvRule.batch_norm`).
    """
    if not fast_cpu_path(backend):
        return False
    rule = conv_rule(dtype, flags=flags, works=works)
    return rule is not None and rule.library == "onednn" and rule.batch_norm


def dense_in_onednn(dtype, backend: str | None = None, *, flags: frozenset[str] | None = None,
                    works: Callable[[str, str], bool] | None = None) -> bool:
    """Whether dense layers computing in `dtype` run their products in jaxnets' oneDNN matmul (`jaxnets.layers.Dense`).

    Where `dtype`'s convolutions run in jaxnets' oneDNN handler and that
    `CONV_RULES` row says so for this jax version (`ConvRule.dense`,
    `ConvRule.dense_jax_below`); `flags` and `works` as in `conv_library`.
    """
    if not fast_cpu_path(backend):
        return False
    rule = conv_rule(dtype, flags=flags, works=works)
    return (rule is not None and rule.library == "onednn" and rule.dense
            and (rule.dense_jax_below is None or jax_version() < rule.dense_jax_below))


def jax_version() -> tuple[int, ...]:
    """The running jax's release as numbers: `(0, 10, 2)`."""
    return tuple(int(part) for part in jax.__version__.split(".")[:3] if part.isdigit())


def child_environment(setting: str) -> dict[str, str]:
    """`os.environ` for a child process that is to decide `JAXNETS_CPU_CONV=setting` afresh.

    Children inherit the `XLA_FLAGS` jaxnets set here; this puts back the
    user's own, so that the child's jaxnets (or XLA's defaults) decide.
    """
    env = {**os.environ, ENV_VAR: setting}
    if _status["user_flags"]:
        env["XLA_FLAGS"] = _status["user_flags"]
    else:
        env.pop("XLA_FLAGS", None)
    return env


def _onednn_description() -> str:
    """jaxnets' oneDNN handler: its oneDNN version, or why it does not run here."""
    if cpu_path_setting() != "fast":
        return f"off ({ENV_VAR}={cpu_path_setting()})"
    problem = onednn_handler_problem()
    if problem is None:
        from jaxnets import onednn

        return f"oneDNN {onednn.version()} (jaxnets' handler)"
    return "not used: " + problem.splitlines()[0]


def _library_text(dtype_name: str) -> str:
    """`'float32: onednn'`, with the rule's exception where it has one (`ConvRule.eigen_from_channels`)."""
    library = conv_library(dtype_name)
    rule = conv_rule(dtype_name)
    if library == "onednn" and rule is not None and rule.eigen_from_channels is not None:
        return (f"{dtype_name}: {library} (eigen for stride-1 convolutions of >= {rule.eigen_from_channels} "
                f"channels at batch <= {rule.eigen_max_batch})")
    return f"{dtype_name}: {library}"


def describe() -> dict[str, str]:
    """What jaxnets did to the CPU backend, for logs and benchmark tables (CPU flags, each dtype's library)."""
    on_cpu = jax.default_backend() == "cpu"
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return {"cpu_conv": cpu_path_setting() if on_cpu else "backend default",
            "cpu_flags": " ".join(f for f in wanted if f in cpu_flags()) or "none of " + " ".join(wanted),
            "conv_library": ", ".join(_library_text(d) for d in ("float32", "bfloat16")) if on_cpu
            else "backend default",
            "onednn": (_onednn_description() if on_cpu else "backend default"),
            "dense_in_onednn": (", ".join(d for d in ("float32", "bfloat16") if dense_in_onednn(d)) or "none")
            if on_cpu else "backend default",
            "xla_flag": _status["flag"], "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
            "host_memory": host_memory.describe(),
            "compile_cache": compile_cache.in_use() + (
                " (not for oneDNN programs: jaxlib cannot serialize them)"
                if on_cpu and compile_cache.in_use() != "off" and conv_library("bfloat16") == "xla-onednn" else "")}
