"""What the numbers were measured on: CPU model, devices, library versions, and the machine's practical peak."""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxnets import backend

PEAK_MATMUL_SIZE = 2048  # the side of the square float32 matmul that `peak_gflops` times on a CPU
# ... and on a GPU/TPU, where a 2048^2 product takes tens of microseconds, as long as its dispatch and sync: timing
# it there would halve the peak. (XLA's default float32 precision there: TF32 on NVIDIA GPUs.)
PEAK_MATMUL_SIZE_ACCELERATOR = 8192


def peak_matmul_size(platform: str | None = None) -> int:
    """The side of the square matmul `peak_gflops` times on `platform` (default: JAX's)."""
    return PEAK_MATMUL_SIZE if (platform or jax.default_backend()) == "cpu" else PEAK_MATMUL_SIZE_ACCELERATOR


def torch_available() -> bool:
    """Whether PyTorch can be imported (the torch modes need it; `pip install 'jaxnets[torch]'`)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


# What `torch_interpreter` runs in the other Python: versions, threads and where its jaxnets comes from.
_PROBE = ("import json, os, sys, torch, jaxnets; print(json.dumps({'torch': torch.__version__, "
          "'torch_threads': torch.get_num_threads(), 'python': sys.version.split()[0], "
          "'jaxnets': os.path.dirname(os.path.abspath(jaxnets.__file__))}))")


@functools.cache
def torch_interpreter(python: str, timeout: float = 300.0) -> dict:
    """What another Python interpreter offers the PyTorch modes (`jaxnets-bench --torch-python`), checked once.

    The PyTorch modes always run in a child process; this lets that child be
    another Python, e.g. the Python 3.11 environment that has PyTorch when this
    one (jax 0.12 on Python 3.12) has none, so both frameworks are still timed
    in one run. The child must import the same jaxnets source as this process
    (the same model definitions and data), so an editable install of this
    checkout there (`pip install -e '.[torch]'`).

    Returns:
      `{'torch', 'torch_threads', 'python', 'jaxnets', 'executable'}`: its torch version and threads, its Python
      version, the folder its jaxnets is imported from, and `python` as given.

    Raises:
      ValueError: `python` is not an interpreter, cannot import torch or jaxnets, or imports another jaxnets.
    """
    try:
        done = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ValueError(f"cannot run the PyTorch interpreter {python!r}: {error}") from None
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ValueError(f"{python!r} cannot import torch and jaxnets ({last}); install both there: "
                         "pip install -e '.[torch]' from this checkout") from None
    info = json.loads(lines[-1])
    ours = str(Path(__file__).resolve().parents[1])
    if Path(info["jaxnets"]).resolve() != Path(ours):
        raise ValueError(f"{python!r} imports jaxnets from {info['jaxnets']}, this process from {ours}: the "
                         "PyTorch modes must run the same model code; install this checkout there "
                         "(pip install -e '.[torch]')")
    return {**info, "executable": python}


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (what `lscpu` prints), else what `platform` knows."""
    fallback = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), fallback)
    except OSError:
        return fallback


def machine(torch_python: str | None = None) -> dict:
    """CPU model and cores, Python, JAX (backend, device), what jaxnets did to XLA, and torch's version and threads.

    With `torch_python` (the interpreter the PyTorch modes run in, `torch_interpreter`), torch's facts are that
    interpreter's, and `torch_python` / `torch_python_version` name it.
    """
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "jax": jax.__version__, "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
            **backend.describe()}
    if torch_python is not None:
        other = torch_interpreter(torch_python)
        info.update(torch=other["torch"], torch_threads=other["torch_threads"], torch_python=torch_python,
                    torch_python_version=other["python"])
    elif torch_available():
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    return info


@functools.cache
def peak_gflops(n: int | None = None, dtype: str = "float32", repeats: int = 10) -> float:
    """This machine's practical peak: GFLOP/s of a jitted `n` x `n` matmul, best of `repeats` (cached per process).

    `n` defaults to `peak_matmul_size()`: 2048 on a CPU, 8192 on an accelerator.
    """
    n = peak_matmul_size() if n is None else n
    a = jnp.ones((n, n), dtype)
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9
