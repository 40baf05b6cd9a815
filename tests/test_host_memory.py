"""jaxnets.host_memory: when jaxnets keeps XLA's large host buffers in the heap, and that it really stops the faults."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from jaxnets import host_memory

LINUX = {"platform": "linux", "glibc": True, "backend_started": False}


@pytest.mark.parametrize("environ, kwargs, wanted, reason", [
    ({}, LINUX, True, "kept in the heap"),
    ({"JAXNETS_HOST_MEMORY": "keep"}, LINUX, True, "kept in the heap"),
    ({"JAXNETS_HOST_MEMORY": " System "}, LINUX, False, "JAXNETS_HOST_MEMORY=system"),
    ({"JAXNETS_HOST_MEMORY": "lots"}, LINUX, False, "not understood"),
    ({}, {**LINUX, "glibc": False}, False, "not glibc"),
    ({}, {**LINUX, "platform": "darwin"}, False, "not glibc"),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, LINUX, False, "user's malloc settings"),
    ({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2"}, LINUX, True, "kept in the heap"),  # not malloc: ours apply
    ({"MALLOC_ARENA_MAX": "4"}, LINUX, False, "user's malloc settings"),
    ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, LINUX, False, "preloaded allocator"),
    ({}, {**LINUX, "backend_started": True}, True, "keep their own arenas"),
])
def test_plan_keeps_buffers_only_where_glibc_runs_and_nobody_chose_otherwise(environ, kwargs, wanted, reason):
    got, why = host_memory.plan(environ, **kwargs)
    assert got is wanted and reason in why


def test_a_bad_setting_is_refused_with_what_to_use():
    with pytest.raises(ValueError, match="JAXNETS_HOST_MEMORY='lots'.*'keep', 'system'"):
        host_memory.setting({"JAXNETS_HOST_MEMORY": "lots"})


# A child process: import jaxnets (which configures malloc), then run a jitted program whose temporary buffer is
# ~72 MB (a sort's copy of 18M floats: above every glibc mmap threshold and a thread arena's size) several times,
# and count the 4 KiB page faults of a run (the median of 5) after the heap has grown to hold it.
_FAULTS = """
import json, resource, statistics
import jaxnets, jax, jax.numpy as jnp
from jaxnets import backend
f = jax.jit(lambda x: jnp.sort(x * 2.0)[::1000])
x = jnp.arange(18_000_000, dtype=jnp.float32)[::-1]
for _ in range(4):  # the heap grows over the first runs, then holds
    f(x).block_until_ready()
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"faults": statistics.median(faults), "host_memory": backend.describe()["host_memory"]}))
"""


def _child_faults(setting: str) -> dict:
    env = {"JAXNETS_HOST_MEMORY": setting, "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", _FAULTS], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # ~40 s: two processes sorting 18M floats 7 times
@pytest.mark.skipif(not sys.platform.startswith("linux") or host_memory._glibc() is None, reason="glibc only")
def test_kept_buffers_stop_the_page_faults_of_every_run():
    """With glibc's defaults each run maps its ~72 MB buffer afresh (~17,600 faults); kept, nearly none."""
    kept, system = _child_faults("keep"), _child_faults("system")
    assert "kept in the heap" in kept["host_memory"] and system["host_memory"].startswith("off")
    pages = 72e6 / 4096
    assert system["faults"] > 0.5 * pages, system  # the mechanism this module exists for is there
    assert kept["faults"] < 0.05 * pages, kept
