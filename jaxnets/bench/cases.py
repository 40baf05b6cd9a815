"""The bench's modes, one table entry each, and how one case (model x mode x what) is measured.

A mode is a `Mode` in `MODE_TABLE`: its name, the framework that runs it
('jax', or 'torch': skipped with a note where PyTorch is not installed), a
one-line description, and `measure`, the function that times one `Case` and
returns the row's measured fields (`MEASURED_KEYS`).

JAX modes measure with `jax_case`, which takes a *program builder*: a
function `(model, state, batch, what) -> Program` giving the undecorated
function to time, its arguments, and how many steps one call performs.
`jax_case` lowers it (trace time), compiles it when `compiled=True` (compile
time, one counted compilation) or else runs it op by op (the first call's
time), times the steady state with `timing.measure`, and takes the FLOPs of
one step from XLA's cost analysis of the single step. So a new way of running
the train step is a program builder plus ONE entry in `_ENTRIES`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxnets import backend, compile_cache, data, host_memory, models
from jaxnets.bench import timing
from jaxnets.training import TrainState, make_steps, optimizers

#: What a case can time: a training step, or inference (eval-mode forward pass).
WHAT = ("train", "infer")
NUM_CLASSES = 10  # labels of the synthetic batches: every benchmarked model has (at least) 10 classes

# The benchmark's MLP is the 784-512-512-10 net of the reference figures, not the
# texts' tiny 784-10-10-10 default.
BENCH_KWARGS: dict[str, dict] = {"mlp": dict(num_layers=2, hidden_size=512)}

# What every measured (not skipped) case reports, besides model, mode, what, batch_size and dtype.
MEASURED_KEYS = ("compile_s", "first_step_s", "trace_s", "flops_per_step", "compilations", "peak_memory_bytes",
                 "step_s_median", "step_s_min", "step_s_max", "steps_timed", "cpu_util")


class Case(NamedTuple):
    """One measurement: which model, what work, how much of it. Plain values, so it crosses to a child process."""

    model: str  # a `jaxnets.models` name
    what: str  # 'train' (forward + backward + SGD update) or 'infer' (forward)
    batch_size: int
    dtype: str = "float32"  # compute dtype: 'float32' or 'bfloat16'
    steps: int | None = None  # steps to time; None: enough for min_time
    min_time: float | None = 2.0
    seed: int = 0
    platform: str = "cpu"  # JAX's platform in the bench's process ('cpu', 'gpu', 'tpu'): PyTorch's device follows it


class Program(NamedTuple):
    """What a JAX mode runs: `fn(*args)`, undecorated (the mode decides whether to compile it)."""

    fn: Callable
    args: tuple
    carry: bool  # fn returns (new args[0], outputs): args[0] (the train state) is threaded through calls and donated
    steps_per_call: int = 1  # steps one call performs; times are reported per step


ProgramBuilder = Callable[[Any, TrainState, data.Batch, str], Program]


@dataclasses.dataclass(frozen=True)
class Mode:
    """One way of running a case: a row of `MODE_TABLE`."""

    name: str
    framework: str  # 'jax' or 'torch' (torch modes need PyTorch installed)
    measure: Callable[..., dict]  # times one case; returns the fields of MEASURED_KEYS (torch modes take python=)
    description: str


def bench_model(name: str, dtype: str = "float32"):
    """The model a case benchmarks: `models.create(name)` with the bench's kwargs (`BENCH_KWARGS`)."""
    return models.create(name, dtype=jnp.dtype(dtype), **BENCH_KWARGS.get(name, {}))


def bench_optimizer(lr: float = 0.01):
    """The texts' SGD (momentum 0.9, weight decay 5e-4): what every case's train step updates with."""
    return optimizers.sgd(lr, momentum=0.9, weight_decay=5e-4)


def case_inputs(case: Case) -> tuple[Any, TrainState, data.Batch]:
    """What a JAX case runs on: `(model, state, batch)`.

    The bench's model (`bench_model`) in `case.dtype`, its fresh `TrainState`
    (SGD: `bench_optimizer`, seeded with `case.seed`) and one synthetic batch of
    `case.batch_size` examples (images in `case.dtype`, int32 labels), seeded alike.
    """
    model = bench_model(case.model, case.dtype)
    batch = data.synthetic_batch(model.input_shape, case.batch_size, num_classes=NUM_CLASSES, seed=case.seed,
                                 dtype=jnp.dtype(case.dtype))
    return model, TrainState.create(model, bench_optimizer(), seed=case.seed), batch


def train_step() -> Callable:
    """The undecorated train step `(state, batch) -> (state, metrics)` that every JAX mode runs."""
    return make_steps(mode="eager").train


# ----------------------------------------------------------------- JAX programs


def step_program(model, state: TrainState, batch: data.Batch, what: str) -> Program:
    """One train step (`what='train'`) or one forward pass (`'infer'`) per call."""
    if what == "train":
        return Program(train_step(), (state, batch), carry=True)
    return Program(lambda variables, x: model.apply(variables, x, train=False), (state.variables, batch.image),
                   carry=False)


def _lower(program: Program, dtype: str):
    return backend.jit(program.fn, dtype=dtype, donate_argnums=(0,) if program.carry else ()).lower(*program.args)


def step_flops(one_step: Program, dtype: str) -> float | None:
    """FLOPs of ONE step (`one_step`'s program), from XLA's HLO cost analysis; None where XLA gives none.

    Traced without jaxnets' oneDNN custom calls (XLA counts no FLOPs inside a
    custom call); a loop body counts once whatever its trip count, so a
    one-step program is what is counted. Where the platform gives no analysis
    (a GPU or TPU through PJRT's C API), the same step is lowered for the CPU
    and counted there: the model's FLOPs do not depend on the device.
    """
    jax.clear_caches()
    with backend.serializable():
        flops = timing.xla_flops(_lower(one_step, dtype))
        if flops is None and jax.default_backend() != "cpu":
            cpu = jax.devices("cpu")[0]
            with jax.default_device(cpu):
                flops = timing.xla_flops(_lower(one_step._replace(args=jax.device_put(one_step.args, cpu)), dtype))
    return flops


def jax_case(case: Case, *, program: ProgramBuilder = step_program, compiled: bool) -> dict:
    """Measure `program` on `case`: compiled once with `jax.jit` (`compiled=True`) or run op by op.

    Every case starts from cold caches, so compile times never reuse another
    case's executables (building the model and its state is not timed).

    Returns:
      the fields of `MEASURED_KEYS`: `compile_s` is XLA's compile time when
      compiled, else the first (cold) call; `trace_s` tracing + lowering
      (compiled modes); `compilations` every XLA compilation the case triggered
      (1 for a compiled program; per-op kernels for op by op).
    """
    model, state, batch = case_inputs(case)
    one_step = step_program(model, state, batch, case.what)
    prog = one_step if program is step_program else program(model, state, batch, case.what)
    flops = step_flops(one_step, case.dtype)
    jax.clear_caches()  # traces are cached per function: the timed program is traced afresh

    start = time.perf_counter()
    lowered = _lower(prog, case.dtype)
    trace_s = time.perf_counter() - start  # tracing to a jaxpr + lowering to HLO, before XLA compiles

    run, compile_s = prog.fn, None
    if compiled:
        start = time.perf_counter()
        run = lowered.compile()
        compile_s = time.perf_counter() - start
    args = list(prog.args)

    def call():
        out = run(*args)
        if prog.carry:
            args[0], out = out
        # Op by op, the optimizer's update may still be queued when the metrics are ready: wait for the new state
        # too. One compiled program's outputs are all ready at once (and waiting on its 166 state leaves would
        # cost 5-50 us a step).
        jax.block_until_ready((args[0], out) if prog.carry and not compiled else out)

    counter = timing.compile_counter()
    with counter.counting():
        first = timing.timed(call)
        measured = timing.measure(call, steps=case.steps, min_time=case.min_time, steps_per_call=prog.steps_per_call)
    return {"compile_s": compile_s if compiled else first, "first_step_s": first,
            "trace_s": trace_s if compiled else None, "flops_per_step": flops,
            "compilations": counter.count + (1 if compiled else 0), "peak_memory_bytes": timing.peak_memory(),
            **measured}


ROW_MARK = "JAXNETS-BENCH-ROW "
# On a GPU, JAX takes 75% of the device's memory when its backend starts, and the bench's own process has started
# it (device facts, the peak matmul): children (JAX or PyTorch) would find a quarter left. So the bench's processes
# allocate on demand unless the user chose otherwise (`jaxnets-bench` sets it in its own process too, before JAX
# starts). No effect on the CPU.
NO_PREALLOCATION = ("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def in_child(case: Case, *, mode: str, cpu_conv: str | None = None, python: str | None = None) -> dict:
    """Measure `mode` (a `measure_here` name) in a child process started with `JAXNETS_CPU_CONV=cpu_conv`.

    Every mode of `MODE_TABLE` is measured this way, each case in a fresh
    process. The CPU convolution path is chosen when JAX starts, so XLA's own
    defaults ('xla') can only be measured in a fresh process. PyTorch runs in a
    child too (`cpu_conv=None`: this process's setting): oneDNN's OpenMP threads,
    which jaxnets' CPU kernels start in this process, slowed PyTorch's own
    OpenMP runtime in the same process by up to 2.6x (LeNet, batch 32).
    PyTorch's and XLA's-defaults children keep glibc's malloc defaults
    (`JAXNETS_HOST_MEMORY=system`: what users of plain PyTorch or plain JAX
    have); jaxnets' own keep this process's `jaxnets.host_memory` setting.
    The child runs this process's Python unless `python` names another
    (`jaxnets-bench --torch-python`: checked by `host.torch_interpreter`).

    Raises:
      RuntimeError: the child failed; the message has its last line of output.
    """
    # The child caches compiled programs where this process does (`jaxnets.compile_cache`; 'off': not at all).
    code = ("import json, sys; from jaxnets import compile_cache; from jaxnets.bench import cases; "
            "sys.argv[3] == 'off' or compile_cache.enable_compilation_cache(sys.argv[3]); "
            "print(cases.ROW_MARK + json.dumps("
            "cases.measure_here(sys.argv[1], cases.Case(**json.loads(sys.argv[2])))))")
    # Not the XLA_FLAGS this process was given by jaxnets: the child chooses its own.
    env = backend.child_environment(backend.cpu_path_setting() if cpu_conv is None else cpu_conv)
    env.setdefault(NO_PREALLOCATION[0], NO_PREALLOCATION[1])
    if mode.startswith("torch") or cpu_conv == "xla":  # glibc's malloc defaults, as plain PyTorch / JAX users have
        env[host_memory.ENV_VAR] = "system"
    if mode.startswith("torch"):  # the child builds its batch with JAX: on the CPU, not beside PyTorch on a GPU
        env["JAX_PLATFORMS"] = "cpu"
    argv = [python or sys.executable, "-c", code, mode, json.dumps(case._asdict()), compile_cache.in_use()]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    rows = [line for line in done.stdout.splitlines() if line.startswith(ROW_MARK)]
    if done.returncode or not rows:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"child process failed (exit {done.returncode}): {tail[0][:200]}")
    return json.loads(rows[-1][len(ROW_MARK):])


# ----------------------------------------------------------------- PyTorch

# The PyTorch device that runs a case whose JAX modes run on a platform (`jax.default_backend()`).
TORCH_DEVICES = {"cpu": "cpu", "gpu": "cuda"}


def torch_device(platform: str, cuda_available: bool) -> str:
    """The PyTorch device for JAX's `platform`: `'cpu'` or `'cuda'`, so both frameworks race on one device.

    Raises:
      ValueError: PyTorch cannot run there (no TPU backend; a CPU-only PyTorch beside JAX on a GPU): its rows
        would time another device than JAX's, so they are skipped with this reason instead.
    """
    if platform not in TORCH_DEVICES:
        raise ValueError(f"JAX runs on {platform!r} here and PyTorch has no backend for it: its modes are skipped "
                         f"(PyTorch runs on {', '.join(TORCH_DEVICES)})")
    if TORCH_DEVICES[platform] == "cuda" and not cuda_available:
        raise ValueError("JAX runs on the GPU here but this PyTorch sees no CUDA device: its rows would time the "
                         "CPU; install a CUDA build of torch (or run the bench with JAX on the CPU: "
                         "JAX_PLATFORMS=cpu)")
    return TORCH_DEVICES[platform]


def torch_case(case: Case, *, compiled: bool) -> dict:
    """The same model (`jaxnets.interop.torch_models`), batch and SGD in PyTorch; `torch.compile` when `compiled`.

    It runs on the device of JAX's platform (`torch_device(case.platform)`:
    the CPU, or CUDA beside JAX on a GPU), each step ending in a device sync as
    JAX's do; on CUDA with JAX's GPU defaults (TF32 float32 products,
    autotuned convolutions), not PyTorch's stricter float32 matmuls.
    `--dtype bfloat16` is PyTorch's mixed precision, `torch.autocast(device,
    torch.bfloat16)` around the forward pass with float32 weights, optimizer
    and loss: the same recipe as jaxnets' bfloat16 (float32 master weights,
    bfloat16 compute). FLOPs come from PyTorch's `FlopCounterMode` on the
    uncompiled net (the same model FLOPs); `compile_s` is the first step
    (torch.compile compiles then).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from jaxnets.interop import torch_models

    device = torch_device(case.platform, torch.cuda.is_available())
    if device == "cuda":  # what JAX does on a GPU by default: TF32 float32 products, autotuned convolutions
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(case.seed)
    mixed = jnp.dtype(case.dtype) == jnp.bfloat16
    net = torch_models.create(case.model, **BENCH_KWARGS.get(case.model, {})).to(device)
    batch = data.synthetic_batch(bench_model(case.model).input_shape, case.batch_size, num_classes=NUM_CLASSES,
                                 seed=case.seed)  # the JAX cases' batch, float32 (autocast casts it)
    x = np.array(batch.image)  # a writable copy: torch refuses read-only buffers
    x = torch.from_numpy(x if x.ndim == 2 else x.transpose(0, 3, 1, 2).copy()).to(device)  # NHWC -> NCHW
    y = torch.from_numpy(np.array(batch.label)).long().to(device)

    def sync():  # a CUDA step is queued, not done, when its Python returns
        if device == "cuda":
            torch.cuda.synchronize()

    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    runner = torch.compile(net) if compiled else net

    if case.what == "train":
        net.train()

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=mixed):
                logits = runner(x)
            loss = torch.nn.functional.cross_entropy(logits.float(), y)
            loss.backward()
            opt.step()
            sync()
    else:
        net.eval()

        def step():
            with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=mixed):
                runner(x)
            sync()

    counter = FlopCounterMode(display=False)
    with counter:  # count on the uncompiled net: the same model FLOPs
        if case.what == "train":
            torch.nn.functional.cross_entropy(net(x).float(), y).backward()
        else:
            with torch.no_grad():
                net(x)
    opt.zero_grad(set_to_none=True)
    first = timing.timed(step)
    measured = timing.measure(step, steps=case.steps, min_time=case.min_time)
    peak = int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None
    return {"compile_s": first, "first_step_s": first, "trace_s": None,
            "flops_per_step": float(counter.get_total_flops()), "compilations": None, "peak_memory_bytes": peak,
            **measured}


# ----------------------------------------------------------------- the table of modes

#: The mode that runs the jit step with XLA's default CPU convolutions (`JAXNETS_CPU_CONV=xla`, in a child process).
XLA_DEFAULT_MODE = "jit-xla"

# Every mode of the table runs in a fresh child process of its own, so that none is measured in a process that
# earlier cases have left with other programs, freed buffers and a grown heap (jaxnets' own `jit` read 3-20% slower
# at the MLP's millisecond step in the bench's process than alone: BENCHMARKS.md round 10).
_ENTRIES = (
    Mode("eager", "jax", functools.partial(in_child, mode="eager"),
         "the train step run op by op, no jax.jit (PyTorch's dynamic graph), in a child process"),
    Mode("jit", "jax", functools.partial(in_child, mode="jit"),
         "the same step traced and compiled once by jax.jit (a static graph), old state donated, in a child process"),
    Mode(XLA_DEFAULT_MODE, "jax", functools.partial(in_child, mode="jit", cpu_conv="xla"),
         "jit with XLA's default CPU convolutions (JAXNETS_CPU_CONV=xla), in a child process"),
    # A new JAX mode goes here, as one entry. A whole-epoch `jax.lax.scan` train function ('scan') is
    #     Mode("scan", "jax", functools.partial(jax_case, program=scan_program, compiled=True),
    #          "K train steps as one compiled jax.lax.scan over K stacked batches"),
    # where `scan_program(model, state, batch, what)` returns
    #     Program(train_epoch, (state, stacked_batches), carry=True, steps_per_call=K)
    # (and raises ValueError for what='infer': the row is then skipped with that reason). `jax_case`
    # reports per-step times (a call's divided by K), FLOPs of one step, and one compilation.
    Mode("torch-eager", "torch", functools.partial(in_child, mode="torch-eager"), "PyTorch, eager, in a child process"),
    Mode("torch-compile", "torch", functools.partial(in_child, mode="torch-compile"),
         "PyTorch with torch.compile, in a child process"),
)
# What a child process started by `in_child` measures, in that process.
_HERE = {"eager": functools.partial(jax_case, compiled=False), "jit": functools.partial(jax_case, compiled=True),
         "torch-eager": functools.partial(torch_case, compiled=False),
         "torch-compile": functools.partial(torch_case, compiled=True)}
#: Every benchmark mode by name: adding a mode is one `Mode` entry.
MODE_TABLE: dict[str, Mode] = {mode.name: mode for mode in _ENTRIES}
#: The mode names `run` accepts, in table order.
MODES = tuple(MODE_TABLE)
#: The modes that need PyTorch installed.
TORCH_MODES = tuple(mode.name for mode in _ENTRIES if mode.framework == "torch")


def measure_here(mode: str, case: Case) -> dict:
    """Measure `mode` ('eager', 'jit', 'torch-eager', 'torch-compile') in this process: what `in_child`'s child runs."""
    return _HERE[mode](case)


def measure_case(mode: str, case: Case, torch_python: str | None = None) -> dict:
    """`MODE_TABLE[mode].measure(case)`; a PyTorch mode's child runs under `torch_python` when given.

    Raises:
      KeyError: `mode` is not in `MODE_TABLE`.
    """
    entry = MODE_TABLE[mode]
    if torch_python is not None and entry.framework == "torch":
        return entry.measure(case, python=torch_python)
    return entry.measure(case)
