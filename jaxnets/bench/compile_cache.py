"""Cold vs cached compile: what JAX's persistent compilation cache saves a second process.

    python -m jaxnets.bench.compile_cache --models resnet18,lenet --batch-size 128 --json compile_cache.json

For each model, two fresh processes compile the same jitted train step
(`jaxnets.training.make_steps(..., 'jit')`) against one new, empty cache
folder (`jaxnets.compile_cache.enable_compilation_cache`): the first compiles and
writes the cache ("cold"), the second reads it back ("cached"). Each process
reports the time to trace and lower the step, the time of `.compile()` (XLA,
or a cache read), and JAX's own cache-hit and -miss events, so a table row
says what happened, not only how long it took.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CACHE_EVENTS = ("/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses")


def measure_step_compile(name: str, batch_size: int, width_divisor: int = 1) -> dict:
    """Trace, lower and compile `name`'s jitted train step once in this process (cache set up by the caller).

    Returns:
      {'model', 'batch_size', 'lower_s', 'compile_s', 'cache_hits', 'cache_misses'} for the step's
      program (events counted from JAX's monitoring during `.compile()` only).
    """
    import jax
    import jax.numpy as jnp
    from jax import monitoring

    from jaxnets import models
    from jaxnets.data import Batch
    from jaxnets.training import TrainState, make_steps, optimizers

    model = models.create(name)
    if "width_divisor" in {f.name for f in dataclasses.fields(model)}:
        model = models.create(name, width_divisor=width_divisor)
    else:
        width_divisor = 1  # MLP and LeNet have no width to narrow
    state = TrainState.create(model, optimizers.create("sgd", 0.01, momentum=0.9))
    batch = Batch(jnp.zeros((batch_size, *model.input_shape), jnp.float32), jnp.zeros((batch_size,), jnp.int32),
                  jnp.ones((batch_size,), bool))
    step = make_steps("cross_entropy", "jit").train
    events: list[str] = []

    def listen(event: str, **_) -> None:
        events.append(event)

    start = time.perf_counter()
    lowered = step.lower(state, batch)
    lowered_at = time.perf_counter()
    monitoring.register_event_listener(listen)
    try:
        lowered.compile()
    finally:
        compiled_at = time.perf_counter()
        monitoring.unregister_event_listener(listen)
    jax.effects_barrier()
    return {"model": name, "batch_size": batch_size, "width_divisor": width_divisor,
            "lower_s": lowered_at - start, "compile_s": compiled_at - lowered_at,
            "cache_hits": events.count(CACHE_EVENTS[0]), "cache_misses": events.count(CACHE_EVENTS[1])}


def _child(args: argparse.Namespace) -> int:
    from jaxnets import compile_cache

    compile_cache.enable_compilation_cache(args.cache_dir)
    print(json.dumps(measure_step_compile(args.child, args.batch_size, args.width_divisor)))
    return 0


def run_fresh_process(name: str, batch_size: int, cache_dir: Path, width_divisor: int = 1) -> dict:
    """`measure_step_compile` in a new Python process with its cache at `cache_dir`."""
    command = [sys.executable, "-m", "jaxnets.bench.compile_cache", "--child", name, "--cache-dir", str(cache_dir),
               "--batch-size", str(batch_size), "--width-divisor", str(width_divisor)]
    env = {**os.environ, "JAXNETS_COMPILE_CACHE": str(cache_dir)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(names: list[str], batch_size: int, width_divisor: int = 1) -> list[dict]:
    """Cold then cached compile of each model's train step, each in a fresh process with a fresh cache."""
    rows = []
    for name in names:
        with tempfile.TemporaryDirectory(prefix="jaxnets-compile-cache-") as folder:
            cold = run_fresh_process(name, batch_size, Path(folder), width_divisor)
            entries = sum(1 for p in Path(folder).iterdir() if p.is_file())
            cached = run_fresh_process(name, batch_size, Path(folder), width_divisor)
        rows.append({"model": name, "batch_size": batch_size, "width_divisor": cold["width_divisor"], "cold": cold,
                     "cached": cached, "cache_entries": entries,
                     "speedup": cold["compile_s"] / cached["compile_s"] if cached["compile_s"] > 0 else None})
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'model':<12} {'batch':>5} {'lower s':>8} {'cold compile s':>15} {'cached compile s':>17} "
          f"{'speedup':>8} {'hits (cached run)':>18}")
    for r in rows:
        name = r["model"] + (f"/{r['width_divisor']}" if r["width_divisor"] != 1 else "")
        print(f"{name:<12} {r['batch_size']:>5} {r['cold']['lower_s']:>8.2f} {r['cold']['compile_s']:>15.2f} "
              f"{r['cached']['compile_s']:>17.3f} {r['speedup'] or float('nan'):>7.1f}x "
              f"{r['cached']['cache_hits']:>18}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jaxnets.bench.compile_cache", description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,lenet", help="comma-separated model names")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--width-divisor", type=int, default=1, help="narrow ResNet/VGG (tiny smoke runs)")
    p.add_argument("--json", default=None, help="write the rows here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.child:
        return _child(args)
    from jaxnets import bench

    report = {"machine": bench.machine(), "command": " ".join(sys.argv),
              "rows": compare([m for m in args.models.split(",") if m], args.batch_size, args.width_divisor)}
    print_table(report["rows"])
    if args.json:
        from jaxnets.report import write_json

        write_json(args.json, report)
        print(f"json: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
