"""Build jaxnets' oneDNN convolution handler once per machine, load it, and register it with XLA:CPU.

`convolution.cc`, `batch_norm.cc` and `matmul.cc` (beside this file) are compiled with the system's C++
compiler against two things already installed: XLA's FFI headers (in jaxlib,
`jax.ffi.include_dir()`) and oneDNN (the PyPI packages `onednn-cpu-gomp`,
the library, and `onednn-devel-cpu-gomp`, its headers; dependencies of
jaxnets on x86-64 Linux). The shared library is cached under
`<jaxnets' user cache dir>/onednn/<key>/`, the key being a hash of the
sources, jaxlib's version and both packages' paths, so a new jaxlib or oneDNN
builds anew (a few seconds, once). Concurrent processes build it once (a file
lock) and never see a half-written file (written aside, then renamed).

Anything missing (not x86-64 Linux, no compiler, no oneDNN package, a failed
build) makes `load()` raise `Unavailable` with what was missing and what to do;
`jaxnets.backend` then keeps XLA's own convolutions and says why
(`jaxnets.backend.describe()`).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
SOURCES = ("convolution.cc", "batch_norm.cc", "matmul.cc")  # compiled, in this order
HEADERS = ("common.h",)
# XLA custom-call target name -> the handler's symbol in the shared library.
TARGETS = {"jaxnets_onednn_convolution": "JaxnetsOnednnConvolution",
           "jaxnets_onednn_convolution_bias_forward": "JaxnetsOnednnConvolutionBiasForward",
           "jaxnets_onednn_convolution_bias_weights": "JaxnetsOnednnConvolutionBiasWeights",
           "jaxnets_onednn_batch_norm_forward": "JaxnetsOnednnBatchNormForward",
           "jaxnets_onednn_batch_norm_backward": "JaxnetsOnednnBatchNormBackward",
           "jaxnets_onednn_matmul": "JaxnetsOnednnMatmul",
           "jaxnets_onednn_matmul_weights_bias": "JaxnetsOnednnMatmulWeightsBias"}
RUNTIME_PACKAGE = "onednn-cpu-gomp"
HEADERS_PACKAGE = "onednn-devel-cpu-gomp"
LIBRARY_FILE = "libdnnl.so.3"
HEADER_FILE = "oneapi/dnnl/dnnl.hpp"
COMPILER_ENV = "CXX"
INSTALL_HINT = (f"install jaxnets' oneDNN dependencies (`pip install {RUNTIME_PACKAGE} {HEADERS_PACKAGE}`) and a C++ "
                "compiler (g++), or set JAXNETS_CPU_CONV=eigen to keep XLA's own convolutions")


class Unavailable(RuntimeError):
    """jaxnets' oneDNN convolutions cannot run in this environment; the message says what is missing."""


def installed_file(package: str, suffix: str) -> Path:
    """The installed file of PyPI package `package` whose path ends with `suffix`.

    Raises:
      Unavailable: the package is not installed or has no such file.
    """
    try:
        files = importlib.metadata.files(package) or []
    except importlib.metadata.PackageNotFoundError:
        raise Unavailable(f"the package {package} is not installed: {INSTALL_HINT}") from None
    for file in files:
        if str(file).endswith(suffix):
            path = Path(file.locate()).resolve()
            if path.exists():
                return path
    raise Unavailable(f"the package {package} has no file {suffix}: reinstall it ({INSTALL_HINT})")


def compiler() -> str:
    """The C++ compiler: `$CXX`, else `g++`, else `c++` on PATH.

    Raises:
      Unavailable: none is found.
    """
    for name in (os.environ.get(COMPILER_ENV), "g++", "c++"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise Unavailable(f"no C++ compiler found (looked for ${COMPILER_ENV}, g++, c++): {INSTALL_HINT}")


def build_inputs() -> dict[str, str]:
    """Everything the built library depends on: source, compiler, jaxlib's FFI headers, oneDNN's files.

    Raises:
      Unavailable: not x86-64 Linux, or a piece is missing.
    """
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise Unavailable(f"jaxnets' oneDNN convolutions are built for x86-64 Linux only (this is {sys.platform} "
                          f"{platform.machine()})")
    import jax
    import jaxlib

    library = installed_file(RUNTIME_PACKAGE, LIBRARY_FILE)
    header = installed_file(HEADERS_PACKAGE, HEADER_FILE)
    return {"sources": " ".join(str(HERE / name) for name in SOURCES), "compiler": compiler(),
            "ffi_include": jax.ffi.include_dir(),
            "onednn_include": str(header.parents[len(Path(HEADER_FILE).parts) - 1]), "onednn_library": str(library),
            "jaxlib": jaxlib.__version__}


def build_key(inputs: dict[str, str]) -> str:
    """A hash of the sources' text and every input's path/version: a new jaxlib or oneDNN gets its own build."""
    digest = hashlib.sha256()
    for name in SOURCES + HEADERS:
        digest.update((HERE / name).read_bytes())
    for name in sorted(inputs):
        digest.update(f"{name}={inputs[name]}\n".encode())
    return digest.hexdigest()[:16]


def compile_command(inputs: dict[str, str], output: Path) -> list[str]:
    """The compiler command that builds `output` (a shared library) from `inputs`."""
    library = Path(inputs["onednn_library"])
    return [inputs["compiler"], "-O2", "-std=c++17", "-shared", "-fPIC", "-w",
            f"-I{inputs['ffi_include']}", f"-I{inputs['onednn_include']}", *inputs["sources"].split(" "),
            "-o", str(output),
            f"-L{library.parent}", f"-l:{library.name}", f"-Wl,-rpath,{library.parent}"]


def cache_dir() -> Path:
    """`<jaxnets' user cache dir>/onednn` (`$JAXNETS_CACHE/onednn`, else `~/.cache/jaxnets/onednn`)."""
    from jaxnets.data import cache

    return cache.user_cache_dir() / "onednn"


def build(folder: Path | None = None) -> Path:
    """The built shared library: from the cache, else compiled now (a few seconds).

    Raises:
      Unavailable: a piece is missing, the cache folder is not writable, or the compiler failed (its last lines
        are in the message).
    """
    from filelock import FileLock

    inputs = build_inputs()
    folder = (cache_dir() if folder is None else Path(folder)) / build_key(inputs)
    library = folder / "jaxnets_onednn.so"
    if library.exists():
        return library
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder / ".lock")):
            if library.exists():  # another process built it while this one waited
                return library
            with tempfile.TemporaryDirectory(dir=folder) as scratch:
                partial = Path(scratch) / library.name
                done = subprocess.run(compile_command(inputs, partial), capture_output=True, text=True,
                                      check=False, timeout=300)
                if done.returncode:
                    tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
                    raise Unavailable(f"building jaxnets' oneDNN convolutions failed (exit {done.returncode}):\n"
                                      f"{tail}\n{INSTALL_HINT}")
                os.replace(partial, library)
    except OSError as error:
        raise Unavailable(f"cannot build jaxnets' oneDNN convolutions in {folder}: {error}. Point JAXNETS_CACHE "
                          f"at a writable folder, or {INSTALL_HINT}") from error
    except subprocess.TimeoutExpired:
        raise Unavailable(f"building jaxnets' oneDNN convolutions took over 5 minutes: {INSTALL_HINT}") from None
    return library


def load() -> ctypes.CDLL:
    """Build (or find) the library, load it and register its handlers as XLA:CPU targets (`TARGETS`); once a process.

    A failure is remembered too: the process does not try to build again.

    Raises:
      Unavailable: see `build`; also when the library does not load.
    """
    library, reason = _load_once()
    if library is None:
        raise Unavailable(reason)
    return library


@functools.cache
def _load_once() -> tuple[ctypes.CDLL | None, str | None]:
    try:
        return _load(), None
    except Unavailable as error:
        return None, str(error)


def _load() -> ctypes.CDLL:
    import jax

    path = build()
    try:
        library = ctypes.CDLL(str(path))
        handlers = {target: getattr(library, symbol) for target, symbol in TARGETS.items()}
    except (OSError, AttributeError) as error:
        raise Unavailable(f"jaxnets' oneDNN convolutions did not load from {path}: {error}. Delete that folder to "
                          f"rebuild, or {INSTALL_HINT}") from error
    library.JaxnetsOnednnVersion.restype = ctypes.c_char_p
    library.JaxnetsOnednnSupportsType.argtypes = [ctypes.c_int]
    for target, handler in handlers.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(handler), platform="cpu")
    return library


def unavailable_reason() -> str | None:
    """None when `load()` works here, else why not (the `Unavailable` message). Loads on first call."""
    return _load_once()[1]


@functools.cache
def dtype_works(dtype_name: str) -> bool:
    """Whether oneDNN has kernels on this CPU for every handler call in `dtype_name` ('float32' or 'bfloat16').

    oneDNN 3.2 computes bfloat16 only from AVX-512 up: on an AVX2-only CPU its
    bfloat16 convolutions and batch norms cannot be made. Asked of the loaded
    library once per dtype (it makes a small primitive of each kind). Raises
    `Unavailable` like `load`.
    """
    codes = {"float32": 0, "bfloat16": 1}
    return dtype_name in codes and bool(load().JaxnetsOnednnSupportsType(codes[dtype_name]))


def require_dtype(dtype) -> None:
    """Raise `Unavailable` unless `dtype_works(dtype)`: the error says which CPU it needs and what to use instead."""
    import numpy as np

    name = np.dtype(dtype).name
    if not dtype_works(name):
        raise Unavailable(f"oneDNN {version()} has no {name} convolution or batch norm kernels for this CPU "
                          f"(bfloat16 needs AVX-512): compute in float32 here, or let jaxnets.layers pick the "
                          f"lowering (it uses oneDNN only where it runs)")


def version() -> str:
    """The oneDNN version the loaded library runs (`'3.2.0'`). Raises `Unavailable` like `load`."""
    return load().JaxnetsOnednnVersion().decode()
