"""Keep XLA's per-step host buffers in the process heap instead of mapping them afresh every step (Linux, glibc).

XLA:CPU allocates the temporary buffer of every execution (246 MB for
ResNet-18's float32 train step at batch 32) with `posix_memalign` on one of
its worker threads. glibc serves an allocation that large with a fresh
`mmap` and returns it with `munmap` when it is freed: a thread's arena cannot
hold more than 64 MB, and above its mmap threshold (32 MB at most) even the
main arena maps. So every step page-faults its whole temporary buffer again,
60,000 4 KiB faults per ResNet-18 step, each zeroing a page in the kernel:
about 12% of that step on a 2-core Zen 4 (BENCHMARKS.md, 2026-12-07 round 8).
PyTorch's tensors are smaller and its allocator reuses them.

At import (`configure()`, called by `import jaxnets`), jaxnets therefore
tells glibc, through its `mallopt`:

- `M_ARENA_MAX=1`: threads allocate from the main heap (which can grow by any
  amount), not from per-thread arenas;
- `M_MMAP_MAX=0`: no allocation is served by its own mapping;
- `M_TRIM_THRESHOLD=2**31 - 1`: freed memory at the top of the heap is kept
  for the next step, not returned to the kernel.

The cost: the process's resident memory does not shrink after a peak (what
PyTorch's CUDA caching allocator does on GPUs too), and threads share one
heap lock. `JAXNETS_HOST_MEMORY=system` (set before importing jaxnets) keeps
glibc's defaults; jaxnets also leaves them where the user chose malloc
settings already (`GLIBC_TUNABLES` with `glibc.malloc.`, `MALLOC_*_`
variables) or preloads another allocator (`LD_PRELOAD`), and on C libraries
other than glibc. `M_ARENA_MAX` only reaches threads that have not allocated
yet: if JAX's backend started before jaxnets was imported, its worker threads
keep their own arenas (`describe()` says so). The benchmark's PyTorch and
`jit-xla` children run with glibc's defaults, as plain PyTorch and plain JAX
users get them.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import warnings

from jaxnets.env_choice import env_choice

ENV_VAR = "JAXNETS_HOST_MEMORY"
CHOICES = ("keep", "system")
# mallopt's parameter numbers (glibc's malloc.h) and the values jaxnets sets.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
SETTINGS = {"M_ARENA_MAX": (M_ARENA_MAX, 1), "M_MMAP_MAX": (M_MMAP_MAX, 0),
            "M_TRIM_THRESHOLD": (M_TRIM_THRESHOLD, 2**31 - 1)}
# Environment variables through which a user already tunes glibc's malloc (or replaces it).
USER_MALLOC_VARIABLES = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_",
                         "MALLOC_TOP_PAD_")

_status = {"host_memory": "not tried"}


def setting(environ: dict | None = None) -> str:
    """`'keep'` (the default: large host buffers stay in the heap) or `'system'` (glibc's defaults).

    Read from `JAXNETS_HOST_MEMORY`.

    Raises:
      ValueError: the variable holds something else.
    """
    return env_choice(ENV_VAR, CHOICES, "'system' keeps glibc's malloc defaults", environ)


def plan(environ: dict, platform: str, glibc: bool, backend_started: bool) -> tuple[bool, str]:
    """Whether to set `SETTINGS`, and why (or why not). Pure, so the decision can be tested.

    Args:
      environ: the process environment (`JAXNETS_HOST_MEMORY`, the user's own malloc settings).
      platform: `sys.platform`.
      glibc: whether the C library is glibc (`mallopt` with these parameters exists).
      backend_started: whether JAX's backend (and its worker threads) started before jaxnets was imported.
    """
    try:
        chosen = setting(environ)
    except ValueError as error:
        return False, f"off: {error}"
    if chosen == "system":
        return False, f"off ({ENV_VAR}=system)"
    if not platform.startswith("linux") or not glibc:
        return False, "not glibc: the C library's own defaults"
    if "glibc.malloc." in environ.get("GLIBC_TUNABLES", "") or any(v in environ for v in USER_MALLOC_VARIABLES):
        return False, "left to the user's malloc settings"
    if "malloc" in environ.get("LD_PRELOAD", ""):
        return False, "left to the preloaded allocator"
    reason = "large buffers kept in the heap (M_ARENA_MAX=1, M_MMAP_MAX=0, M_TRIM_THRESHOLD=2**31-1)"
    if backend_started:
        reason += "; JAX started before jaxnets, so its worker threads keep their own arenas"
    return True, reason


def _glibc() -> ctypes.CDLL | None:
    """glibc, loaded through ctypes, or None where the C library is another."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        return libc
    except (OSError, AttributeError):
        return None


def configure(backend_started: bool) -> str:
    """Apply `plan` at import (see the module docstring). Returns the reason, also kept for `describe()`."""
    libc = _glibc() if sys.platform.startswith("linux") else None
    wanted, reason = plan(dict(os.environ), sys.platform, libc is not None, backend_started)
    if wanted:
        refused = [name for name, (param, value) in SETTINGS.items() if libc.mallopt(param, value) != 1]
        if refused:
            reason = f"glibc refused {', '.join(refused)}: its defaults stand for those"
    if reason.startswith(f"off: {ENV_VAR}"):
        warnings.warn(reason, stacklevel=3)  # at import: nothing else would tell the user
    _status["host_memory"] = reason
    return reason


def describe() -> str:
    """What `configure()` did, for logs and benchmark tables."""
    return _status["host_memory"]
