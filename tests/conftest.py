"""Shared fixtures. Rank promotion raises, so silent broadcasting bugs fail loudly."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
# Data caches go to a throwaway folder, never into ~/.cache or the shared data.
os.environ.setdefault("JAXNETS_CACHE", tempfile.mkdtemp(prefix="jaxnets-cache-"))
# The commands turn JAX's persistent compilation cache on; in tests (in-process and child processes alike) it stays
# off, so that every test compiles as if alone. tests/test_compile_cache.py turns it on where it is tested.
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
