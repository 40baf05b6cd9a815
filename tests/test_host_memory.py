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


# A child process: import jaxnets (which configures malloc), then, on a new thread (as XLA's workers allocate),
# allocate ~72 MB (above every glibc mmap threshold and a thread arena's size), write it, free it, four times,
# and count the 4 KiB page faults of each round. The same pattern as XLA's per-step temporary buffer.
_FAULTS = """
import ctypes, json, resource, threading
import jaxnets
from jaxnets import backend
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
size, faults = 72_000_000, []

def rounds():
    for _ in range(4):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = libc.malloc(size)
        libc.memset(block, 1, size)
        libc.free(block)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

worker = threading.Thread(target=rounds)
worker.start()
worker.join()
print(json.dumps({"faults": faults, "host_memory": backend.describe()["host_memory"]}))
"""


def _child_faults(setting: str) -> dict:
    env = {"JAXNETS_HOST_MEMORY": setting, "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", _FAULTS], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux") or host_memory._glibc() is None, reason="glibc only")
def test_kept_buffers_stop_the_page_faults_of_every_round():
    """With glibc's defaults each round maps its 72 MB afresh (~17,600 faults); kept, only the first round faults."""
    kept, system = _child_faults("keep"), _child_faults("system")
    assert "kept in the heap" in kept["host_memory"] and system["host_memory"].startswith("off")
    pages = 72e6 / 4096
    assert all(f > 0.9 * pages for f in system["faults"]), system  # the mechanism this module exists for is there
    assert kept["faults"][0] > 0.9 * pages and all(f < 0.01 * pages for f in kept["faults"][1:]), kept
