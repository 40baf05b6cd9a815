"""What the numbers were measured on: CPU model, devices, library versions, and the machine's practical peak."""

from __future__ import annotations

import functools
import os
import platform
import time

import jax
import jax.numpy as jnp

from jaxnets import backend

PEAK_MATMUL_SIZE = 2048  # the side of the square float32 matmul that `peak_gflops` times


def torch_available() -> bool:
    """Whether PyTorch can be imported (the torch modes need it; `pip install 'jaxnets[torch]'`)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (what `lscpu` prints), else what `platform` knows."""
    fallback = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), fallback)
    except OSError:
        return fallback


def machine() -> dict:
    """CPU model and cores, Python, JAX (backend, device), what jaxnets did to XLA, and torch's version and threads."""
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "jax": jax.__version__, "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
            **backend.describe()}
    if torch_available():
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    return info


@functools.cache
def peak_gflops(n: int = PEAK_MATMUL_SIZE, dtype: str = "float32", repeats: int = 10) -> float:
    """This machine's practical peak: GFLOP/s of a jitted `n` x `n` matmul, best of `repeats` (cached per process)."""
    a = jnp.ones((n, n), dtype)
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9
