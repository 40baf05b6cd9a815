"""The built wheel works on its own: installed (not editable) into a fresh venv outside the checkout.

Package data, entry points and dependencies are all declared only if the four commands run there, with
nothing of the checkout on the path. The wheel is `$JAXNETS_WHEEL` when set (CI builds it with
`python -m build` and checks it with `twine check` first), else built here with `pip wheel`.
Dependencies come through pip's cache, warm after the project's own install (about a minute on 2 cores).
The suite leaves it out by default (pyproject's addopts); run it with `pytest -m wheel tests/test_wheel.py`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Any of these would let the checkout, or the suite's caches and XLA settings, leak into the fresh install.
# PYTHONDONTWRITEBYTECODE (set on these machines) goes too: the install is --no-compile, so with it every command
# below would compile jax, flax and jaxnets from source on import; without it the first command caches them.
_LEAKY = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "XLA_FLAGS", "PYTHONDONTWRITEBYTECODE")
_LEAKY_PREFIXES = ("JAXNETS_", "JAX_")


def _version_in_checkout() -> str:
    namespace: dict = {}
    exec((ROOT / "jaxnets" / "_version.py").read_text(), namespace)
    return namespace["__version__"]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LEAKY and not k.startswith(_LEAKY_PREFIXES)}
    env.update(extra)
    return env


def _run(args: list, cwd: Path, env: dict, timeout: int = 600) -> str:
    start = time.perf_counter()
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    print(f"{time.perf_counter() - start:6.1f} s  {' '.join(Path(str(a)).name for a in args[:4])}")
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv outside the checkout with the wheel installed (not editable); returns its bin folder."""
    base = tmp_path_factory.mktemp("wheel")
    assert ROOT not in base.parents, "the venv must live outside the checkout"
    wheel = os.environ.get("JAXNETS_WHEEL")
    if wheel is not None:
        wheel = Path(wheel).resolve()  # relative to where pytest started; the install runs elsewhere
        assert wheel.is_file(), f"JAXNETS_WHEEL={os.environ['JAXNETS_WHEEL']}: no such wheel"
    else:
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", base / "dist", ROOT], base,
             _clean_env())
        [wheel] = (base / "dist").glob("jaxnets-*.whl")
    venv.EnvBuilder(with_pip=True, clear=True).create(base / "venv")
    bin_dir = base / "venv" / "bin"
    # --no-compile: byte-compiling every dependency up front is about a third of the install; the commands
    # compile only what they import.
    _run([bin_dir / "python", "-m", "pip", "install", "--quiet", "--no-compile", wheel], base, _clean_env())
    return bin_dir


@pytest.mark.slow
@pytest.mark.wheel
def test_the_wheel_installs_and_its_commands_run_outside_the_checkout(installed, tmp_path):
    """In a fresh venv and a temp folder: import (the installed copy, the checkout's version), a 1-epoch
    jaxnets-train on the embedded digits with downloads made impossible, the convert/export help and a
    2-step jit bench. Fails on an undeclared dependency, package file or entry point."""
    home = tmp_path / "home"
    home.mkdir()
    # A proxy that refuses every connection: any download would fail the run, so the default needs none.
    env = _clean_env(HOME=str(home), PATH=f"{installed}{os.pathsep}{os.environ['PATH']}",
                     HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9",
                     http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")
    python = installed / "python"

    out = _run([python, "-c", "import jaxnets, json; print(json.dumps([jaxnets.__file__, jaxnets.__version__]))"],
               tmp_path, env)
    location, version = json.loads(out.strip().splitlines()[-1])
    print("installed jaxnets", version, "at", location)
    assert Path(location).is_relative_to(installed.parent) and not Path(location).is_relative_to(ROOT)
    assert version == _version_in_checkout()

    out = _run([installed / "jaxnets-train", "--epochs", "1", "--no-progress"], tmp_path, env)
    assert "final test accuracy" in out, out
    history = json.loads((tmp_path / "runs" / "lenet-digits" / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1]

    assert "usage: jaxnets-convert" in _run([installed / "jaxnets-convert", "--help"], tmp_path, env)
    assert "usage: jaxnets-export" in _run([installed / "jaxnets-export", "--help"], tmp_path, env)
    out = _run([installed / "jaxnets-bench", "--models", "mlp", "--modes", "jit", "--steps", "2"], tmp_path, env)
    assert "mlp" in out and "jit" in out, out
