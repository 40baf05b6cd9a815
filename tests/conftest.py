"""Shared fixtures and JAX settings for the suite.

Rank promotion raises and dtype promotion is strict (as equinox's tests do), so
silent broadcasting and silent float64/int upcasts fail loudly. Compiled programs
go to a session-wide persistent cache: the many runs of the same small model
(fit, resume, the CLI) compile each program once, not once per test.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import jax
import pytest

# Tests compile hundreds of programs and run each for a few steps, so LLVM's optimisation passes are most of
# their cost. Level 1 compiles the suite's ResNet/VGG variants 2-4x faster than XLA's default and runs as fast;
# level 0 (what test_bench's `quick_compiles` uses) runs float64 and bfloat16 steps 4x slower. Set before the
# backend starts (XLA reads XLA_FLAGS once); child processes inherit it. Benchmarks never run under it.
TEST_XLA_FLAG = "--xla_backend_optimization_level=1"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + TEST_XLA_FLAG).strip()
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")
# One throwaway compilation cache per session (never ~/.cache): identical programs compile once. Subprocesses
# that should share it get `COMPILE_CACHE_ENV`; notebooks do not (05 shows what a first compile costs).
# pytest-xdist's workers inherit the controller's environment, so both workers share the one folder.
os.environ.setdefault("JAXNETS_TEST_XLA_CACHE", tempfile.mkdtemp(prefix="jaxnets-xla-cache-"))
COMPILE_CACHE_ENV = {"JAX_COMPILATION_CACHE_DIR": os.environ["JAXNETS_TEST_XLA_CACHE"],
                     "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.05",  # small programs too, not eager's single ops
                     "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
jax.config.update("jax_compilation_cache_dir", COMPILE_CACHE_ENV["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.05)  # 0.3 s: the quick lane ~8 s slower
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
# Data caches go to a throwaway folder, never into ~/.cache or the shared data.
os.environ.setdefault("JAXNETS_CACHE", tempfile.mkdtemp(prefix="jaxnets-cache-"))
# The commands turn their own persistent compilation cache on (under the user's cache dir); in tests they leave
# JAX's settings alone, so only the session cache above is used. tests/test_compile_cache.py tests theirs.
os.environ.setdefault("JAXNETS_COMPILE_CACHE", "0")

SHARED_DATA = Path(os.environ.get("JAXNETS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture
def getkey():
    """`getkey()` returns a fresh PRNG key each call (equinox's pattern)."""
    key = jax.random.key(0)

    def _next():
        nonlocal key
        key, sub = jax.random.split(key)
        return sub

    return _next


@pytest.fixture
def shared_data() -> Path:
    """`../shared/data` (real MNIST / CIFAR samples); skips the test when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA} (only present on the project's build machines)")
    return SHARED_DATA


@pytest.fixture
def shared_data_optional() -> Path | None:
    """`../shared/data` when present (notebooks then use real CIFAR images), else None."""
    return SHARED_DATA if SHARED_DATA.is_dir() else None


@pytest.fixture(scope="session")
def compile_cache_env() -> dict[str, str]:
    """Environment variables that point a child process at this session's compilation cache."""
    return dict(COMPILE_CACHE_ENV)
