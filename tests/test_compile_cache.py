"""The persistent compilation cache: a second process reads what the first compiled; `--no-cache` writes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxnets import compile_cache
from jaxnets.cli import bench as bench_cli
from jaxnets.cli import train as train_cli

REPO = Path(__file__).resolve().parents[1]

# `jaxnets-train` itself, with training replaced by one compiled program; prints JAX's own cache events.
STUB_TRAIN = """
import json, sys, types
import jax, jax.numpy as jnp
from jax import monitoring
from jaxnets.cli import train as cli
imported = jax.config.jax_compilation_cache_dir  # after importing the library: still None
events = []
monitoring.register_event_listener(lambda event, **_: events.append(event))

def one_program(config, **_):
    jax.block_until_ready(jax.jit(lambda a: jnp.tanh(a @ a.T).sum())(jnp.arange(12.0).reshape(3, 4)))
    return types.SimpleNamespace(history=[])

cli.fit = one_program
code = cli.main(sys.argv[1:])
print(json.dumps({"code": code, "on_import": imported, "folder": jax.config.jax_compilation_cache_dir,
                  "hits": events.count("/jax/compilation_cache/cache_hits"),
                  "misses": events.count("/jax/compilation_cache/cache_misses")}))
"""


def _train(cache: Path, *argv: str, setting: str = "1") -> dict:
    """Run the stubbed `jaxnets-train` with `$JAXNETS_CACHE=cache` and `$JAXNETS_COMPILE_CACHE=setting`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
           "JAXNETS_CACHE": str(cache), "JAXNETS_COMPILE_CACHE": setting}
    done = subprocess.run([sys.executable, "-c", STUB_TRAIN, "--workdir", str(cache.parent / "run"), *argv],
                          capture_output=True, text=True, env=env, cwd=cache.parent, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _entries(folder: Path) -> set[str]:
    return {p.name for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


@pytest.mark.slow  # two fresh processes: mostly Python and JAX start-up
def test_second_run_of_the_command_hits_the_cache(tmp_path):
    first = _train(tmp_path / "cache")
    assert first["on_import"] is None  # importing jaxnets never turns the cache on
    assert first["folder"] == str(tmp_path / "cache" / "xla") and first["hits"] == 0 and first["misses"] >= 1
    written = _entries(tmp_path / "cache" / "xla")
    assert written  # CPU programs are cached (JAX's default 1 s threshold would skip these)
    second = _train(tmp_path / "cache")
    assert second["hits"] >= 1 and second["misses"] == 0
    assert _entries(tmp_path / "cache" / "xla") == written


@pytest.mark.parametrize("how", ["--no-cache", pytest.param("JAXNETS_COMPILE_CACHE=0", marks=pytest.mark.slow)])
def test_switched_off_writes_nothing(tmp_path, how):
    out = _train(tmp_path / "cache", "--no-cache") if how == "--no-cache" else _train(tmp_path / "cache", setting="0")
    assert out["folder"] is None and out["hits"] == out["misses"] == 0 and out["code"] == 0
    assert not (tmp_path / "cache" / "xla").exists()


def test_plan(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXNETS_CACHE", str(tmp_path))
    assert compile_cache.compilation_cache_plan(environ={}) == tmp_path / "xla"
    assert compile_cache.compilation_cache_plan(no_cache=True, environ={}) is None
    for off in ("0", "off", "False", "no"):
        assert compile_cache.compilation_cache_plan(environ={"JAXNETS_COMPILE_CACHE": off}) is None
    assert compile_cache.compilation_cache_plan(environ={"JAXNETS_COMPILE_CACHE": "on"}) == tmp_path / "xla"
    assert compile_cache.compilation_cache_plan(
        environ={"JAXNETS_COMPILE_CACHE": str(tmp_path / "c")}) == tmp_path / "c"


class _Stop(Exception):
    pass


@pytest.mark.parametrize("main", [train_cli.main, bench_cli.main], ids=["jaxnets-train", "jaxnets-bench"])
def test_commands_pass_no_cache(monkeypatch, main):
    calls = []

    def record(no_cache=False):
        calls.append(no_cache)
        raise _Stop

    monkeypatch.setattr(compile_cache, "compilation_cache_for_command", record)
    for argv, expected in (([], False), (["--no-cache"], True)):
        with pytest.raises(_Stop):
            main(argv)
        assert calls[-1] is expected
