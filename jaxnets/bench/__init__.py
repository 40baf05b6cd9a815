"""Eager vs jit (vs PyTorch), measured in one run on one machine.

    >>> from jaxnets import bench
    >>> rows = bench.run(["mlp", "lenet"], ["eager", "jit"], batch_size=128, steps=20)
    >>> bench.print_table(rows)

For every model x mode it reports the compile (or first-step) time apart
from the steady-state step time (median / min / max over timed segments after
warm-up), images/s, FLOPs per step (XLA's cost analysis of the compiled step;
PyTorch's FlopCounterMode for torch), achieved GFLOP/s and % of this
machine's peak (measured here with a large jitted matmul), process CPU
utilisation, peak memory where the backend reports it, and how many XLA
compilations the run triggered. Modes: 'eager' (the train step run op by op),
'jit' (one compiled program), 'jit-xla' (the same jit step with XLA's default CPU
convolutions, i.e. with `JAXNETS_CPU_CONV=xla`), 'torch-eager', 'torch-compile'.
Every case runs in a fresh child process of its own (the same footing for every
mode: no case inherits another's programs or heap), `rounds` times over if asked.
With `dtype='bfloat16'` jaxnets computes in bfloat16 with float32 weights, and
PyTorch runs the same recipe: `torch.autocast('cpu', torch.bfloat16)`.

The package, one concern per module:
  host          what the numbers were measured on (CPU model, devices, versions, peak GFLOP/s)
  timing        compile vs steady state, segments' median/min/max, CPU use, compile counts, FLOPs
  cases         the table of modes (`MODE_TABLE`: adding a mode is one entry) and one case's measurement
  suite         `run` (every model x mode, `rounds` times over), `ratios`, `numerics` (eager == jit), `vary_batch`
  jaxnets.report  tables, JSON and plots (shared with `fit`)

These run on their own (`python -m jaxnets.bench.NAME --help`):
  epochs        whole epochs in each mode (eager / jit / scan) and compute dtype
  conv_layers   a model's convolutions one by one, JAX (jaxnets, XLA, im2col, oneDNN) vs PyTorch, any dtype
  step_profile  where one compiled train step's time goes, by kind of XLA operation (JAX's profiler)
  conv_passes   each convolution's forward, input and weight gradient: XLA's Eigen vs jaxnets' oneDNN
  interleaved   jaxnets' CPU path vs XLA's Eigen convolutions (or a changed rule), compiled, timed in alternation
  devices       data-parallel throughput on 1, 2, 4, ... devices
  compile_cache cold vs cached compile in a second process
  same_start    the first steps in jaxnets and PyTorch from the same weights and batches
  init_parity   LeNet on real MNIST from jaxnets' init vs PyTorch's

and `pipeline` (the input pipeline beside the train step it feeds) through `jaxnets-bench --what pipeline`.
The command `jaxnets-bench` itself is `jaxnets.cli.bench`.
"""

from jaxnets.bench.cases import MODE_TABLE, MODES, TORCH_MODES, WHAT, XLA_DEFAULT_MODE, Case, Mode, Program
from jaxnets.bench.host import machine, peak_gflops, torch_available, torch_interpreter
from jaxnets.bench.suite import combine_rounds, numerics, plot, print_table, ratios, run, table, vary_batch
from jaxnets.bench.timing import CompileCounter

__all__ = ["MODES", "MODE_TABLE", "TORCH_MODES", "WHAT", "XLA_DEFAULT_MODE", "Case", "CompileCounter", "Mode",
           "Program", "combine_rounds", "machine", "numerics", "peak_gflops", "plot", "print_table", "ratios", "run",
           "table", "torch_available", "torch_interpreter", "vary_batch"]
