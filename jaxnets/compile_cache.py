"""JAX's persistent compilation cache, as jaxnets' commands use it.

`jaxnets-train` and `jaxnets-bench` turn it on (`compilation_cache_for_command`)
unless `--no-cache` or `JAXNETS_COMPILE_CACHE=0`; plain `import jaxnets` never
does: a library should not write to the user's disk unasked.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

import jax

# Where this process caches compiled programs ('off' until a command or the user turns the cache on);
# `jaxnets.backend.describe()` reports it.
_state = {"folder": "off"}

COMPILE_CACHE_ENV = "JAXNETS_COMPILE_CACHE"
_CACHE_OFF = ("0", "off", "false", "no")
_CACHE_ON = ("", "1", "on", "true", "yes")
# Caching every compile pays off on the CPU: a small eager LeNet step reads ~150 tiny programs back
# faster than XLA compiles them (measured: 22.7 s -> 6.6 s for the first eager step, 3.7 s -> 1.0 s jit).
CACHE_MIN_COMPILE_TIME_S = 0.0
CACHE_MAX_BYTES = 2 * 1024**3  # least recently used entries go beyond this


def default_compilation_cache_dir() -> Path:
    """`<jaxnets' user cache dir>/xla`: `$JAXNETS_CACHE/xla`, else `~/.cache/jaxnets/xla`."""
    from jaxnets.data import cache  # jaxnets.data imports this module

    return cache.user_cache_dir() / "xla"


def compilation_cache_plan(no_cache: bool = False, environ: Mapping[str, str] | None = None) -> Path | None:
    """Where a jaxnets command should cache compiled programs, or None for nowhere (pure; see below).

    Off when `no_cache` (the commands' `--no-cache`) or `JAXNETS_COMPILE_CACHE` is
    `0`/`off`/`false`/`no`; `JAXNETS_COMPILE_CACHE` unset, empty, `1`/`on`/`true`/`yes`
    gives the default folder; any other value is the folder to use.
    """
    value = (os.environ if environ is None else environ).get(COMPILE_CACHE_ENV, "").strip()
    if no_cache or value.lower() in _CACHE_OFF:
        return None
    if value.lower() in _CACHE_ON:
        return default_compilation_cache_dir()
    return Path(value).expanduser()


def enable_compilation_cache(path: str | Path | None = None, *, min_compile_time_s: float = CACHE_MIN_COMPILE_TIME_S,
                             max_bytes: int = CACHE_MAX_BYTES) -> Path:
    """Turn on JAX's persistent compilation cache: later processes load compiled programs instead of compiling.

    A library should not write to the user's disk unasked, so `import jaxnets`
    never calls this; the commands `jaxnets-train` and `jaxnets-bench` do
    (unless `--no-cache` or `JAXNETS_COMPILE_CACHE=0`), and so may a script or
    notebook. It is JAX's own cache (`jax_compilation_cache_dir`), which
    works on CPU, GPU and TPU. Its keys hash the program, the backend and its
    version, the compiler options and `XLA_FLAGS`, so jaxnets' CPU
    convolution choice (`JAXNETS_CPU_CONV`, `jaxnets.backend`) keeps separate entries;
    source locations are not hashed, so editing comments keeps the entries.

    Args:
      path: the cache folder (created when needed); default
        `default_compilation_cache_dir()`.
      min_compile_time_s: cache only programs that took at least this long to
        compile (JAX's default of 1 s would skip most CPU programs; 0 caches all).
      max_bytes: size limit of the folder; least recently used entries are
        evicted beyond it.

    Returns:
      The cache folder.

    Raises:
      OSError: the folder cannot be created.
    """
    from jax.experimental.compilation_cache import compilation_cache

    path = Path(default_compilation_cache_dir() if path is None else path).expanduser().absolute()
    path.mkdir(parents=True, exist_ok=True)
    if jax.config.jax_compilation_cache_dir not in (None, str(path)):
        compilation_cache.reset_cache()  # JAX opens its cache once per process; reopen it at the new folder
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # any size: CPU programs are small
    jax.config.update("jax_compilation_cache_max_size", int(max_bytes))
    _state["folder"] = str(path)
    return path


def compilation_cache_for_command(no_cache: bool = False) -> Path | None:
    """What the commands call first: `enable_compilation_cache` at `compilation_cache_plan(no_cache)`, if any.

    A cache folder that cannot be created only costs speed: the command runs on
    without the cache (and says so on stderr).
    """
    path = compilation_cache_plan(no_cache)
    if path is None:
        _state["folder"] = "off"
        return None
    try:
        return enable_compilation_cache(path)
    except OSError as err:
        print(f"note: no compilation cache ({path}: {err}); set {COMPILE_CACHE_ENV}=0 to silence this",
              file=sys.stderr)
        _state["folder"] = "off"
        return None


def in_use() -> str:
    """The folder this process caches compiled programs in, or `'off'`."""
    return _state["folder"]
