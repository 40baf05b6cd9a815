"""How one case is timed: steady-state segments after warm-up, CPU use, XLA compilations, FLOPs, peak memory.

Compile time and steady-state step time are reported apart (the static
graph pays the first once; the dynamic graph pays per-op dispatch every step).
"""

from __future__ import annotations

import contextlib
import functools
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax


def timed(fn: Callable[[], Any]) -> float:
    """Wall seconds of one `fn()` (which must itself wait for the device)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class CompileCounter:
    """Counts XLA backend compilations (via `jax.monitoring`) while `counting()` is active."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        self.count, self.seconds, self._active = 0, 0.0, False
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event: str, duration: float, **_) -> None:
        if self._active and event == self.EVENT:
            self.count += 1
            self.seconds += duration

    @contextlib.contextmanager
    def counting(self) -> Iterator[CompileCounter]:
        """Reset the count and seconds, then count until the block ends."""
        self.count, self.seconds, self._active = 0, 0.0, True
        try:
            yield self
        finally:
            self._active = False


@functools.lru_cache(maxsize=1)
def compile_counter() -> CompileCounter:
    """The process's one counter (`jax.monitoring` listeners cannot be removed, so make only one)."""
    return CompileCounter()


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(call: Callable[[], Any], *, steps: int | None, min_time: float | None, steps_per_call: int = 1,
            segments: int = 5, warmup: int = 2) -> dict:
    """Warm up, then time `segments` segments of k calls each; every call must end in a device sync.

    Args:
      call: runs `steps_per_call` steps and waits for them.
      steps: steps to time in all (at least one call per segment); None: enough for `min_time`.
      min_time: seconds to time in all when `steps` is None (default 2).
      steps_per_call: steps one call performs (a whole-epoch program runs many); times are per step.
      segments: how many timed segments (the median, min and max are over these).
      warmup: untimed calls first.

    Returns:
      `step_s_median`, `step_s_min`, `step_s_max` (seconds per step), `steps_timed`, and
      `cpu_util` (process CPU seconds / wall seconds while timing; 2.0 = two cores busy).
    """
    for _ in range(warmup):
        call()
    if steps is None:  # pick k so that all segments together take about min_time
        probe = timed(call)
        calls = max(segments, int((min_time or 2.0) / max(probe, 1e-6)))
    else:
        calls = max(1, steps // steps_per_call)
    per_segment = max(1, calls // segments)
    times, cpu_start, wall_start = [], cpu_seconds(), time.perf_counter()
    for _ in range(segments):
        times.append(timed(lambda: [call() for _ in range(per_segment)]) / (per_segment * steps_per_call))
    wall = time.perf_counter() - wall_start
    return {"step_s_median": statistics.median(times), "step_s_min": min(times), "step_s_max": max(times),
            "steps_timed": per_segment * segments * steps_per_call, "cpu_util": (cpu_seconds() - cpu_start) / wall}


def peak_memory() -> int | None:
    """Peak bytes in use on the first device, where the backend reports it (GPUs, TPUs); None on CPU."""
    stats = jax.devices()[0].memory_stats()
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def xla_flops(lowered_or_compiled) -> float | None:
    """FLOPs of a lowered (or compiled) program from XLA's HLO cost analysis; None where XLA gives none.

    Backends reached through PJRT's C API (the CUDA and TPU plugins) raise
    `NotImplementedError` for the analysis: None there too.
    """
    try:
        cost = lowered_or_compiled.cost_analysis()
    except NotImplementedError:
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None
