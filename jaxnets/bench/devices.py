"""Data parallel throughput: training images/s on 1, 2, 4, ... devices, one global batch.

    python -m jaxnets.bench.devices                          # LeNet and ResNet-18, 1/2/4 devices
    python -m jaxnets.bench.devices --json devices.json --batch-size 256 --steps 30

The same jitted `train_step` runs over a `('data',)` mesh of the first N
devices (`jaxnets.training.distributed`), the global batch sharded, the state
replicated; the compile is timed apart from the steady state. On a CPU-only
machine the devices are *virtual* (`jax_num_cpu_devices`, set here before JAX
starts): they share this machine's cores, so the table shows the cost of
splitting a step, not a speed-up, and says so in its `kind` column.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence

import numpy as np

from jaxnets import backend
from jaxnets.report import write_json

MODELS = ("lenet", "resnet18")
# The batch shape each model trains on (NHWC): LeNet on MNIST, ResNet-18 on CIFAR-10.
INPUT_SHAPES = {"lenet": (28, 28, 1), "resnet18": (32, 32, 3)}


def use_virtual_cpu_devices(count: int) -> None:
    """Ask for `count` CPU devices (only possible before JAX's backend starts; harmless on GPU/TPU).

    Raises:
      RuntimeError: the backend already started with fewer CPU devices.
    """
    import jax

    if backend.backend_started():
        if jax.default_backend() == "cpu" and jax.device_count() < count:
            raise RuntimeError(f"JAX already started with {jax.device_count()} CPU devices; run the benchmark in a "
                               f"fresh process (python -m jaxnets.bench.devices) to get {count}")
        return
    jax.config.update("jax_num_cpu_devices", count)


def host_variables(model, seed: int = 0):
    """Seeded host-side weights of `model`'s shapes (throughput does not depend on the values; this skips
    compiling the PRNG for every layer)."""
    import jax

    from jaxnets import models

    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if "scale" in name or "var" in name:
            return np.ones(leaf.shape, leaf.dtype)
        if "bias" in name or "mean" in name:
            return np.zeros(leaf.shape, leaf.dtype)
        return (rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, jax.eval_shape(lambda: models.init(model, jax.random.key(seed))))


def measure(model_name: str, devices: int, batch_size: int, steps: int, *, width_divisor: int = 1,
            seed: int = 0) -> dict:
    """Train-step throughput of `model_name` over a mesh of the first `devices` devices.

    Returns:
      a row: model, devices, kind ('virtual CPU' or the platform), global batch,
      compile_seconds (first call), step_ms (median over `steps` timed steps),
      images_per_second (global batch / median step).

    Raises:
      ValueError: fewer devices than asked for, or a batch that does not divide over them.
    """
    import jax

    from jaxnets import data, models
    from jaxnets.training import TrainState, distributed, make_steps, optimizers

    if devices > jax.device_count():
        raise ValueError(f"{devices} devices asked for, {jax.device_count()} available")
    mesh = distributed.data_parallel_mesh(jax.devices()[:devices])
    distributed.check_batch_size(batch_size, mesh)
    kwargs = {"width_divisor": width_divisor} if model_name.startswith(("resnet", "vgg")) and width_divisor > 1 else {}
    model = models.create(model_name, **kwargs)
    tx = optimizers.create("sgd", 0.01, momentum=0.9)
    state = distributed.replicate(jax.device_get(TrainState.create(model, tx, seed=seed,
                                                                   variables=host_variables(model, seed))), mesh)
    rng = np.random.default_rng(seed)
    host_batch = data.Batch(rng.normal(size=(batch_size, *INPUT_SHAPES[model_name])).astype(np.float32),
                            rng.integers(0, 10, batch_size).astype(np.int32), np.ones(batch_size, bool))
    batch = jax.device_put(host_batch, distributed.batch_sharding(mesh))
    train = make_steps("cross_entropy", "jit").train
    start = time.perf_counter()
    state, metrics = train(state, batch)
    jax.block_until_ready(metrics)
    compile_seconds = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = train(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    step = statistics.median(times)
    platform_name = jax.devices()[0].platform
    return {"model": model_name + (f"/{width_divisor}" if kwargs else ""), "devices": devices,
            "kind": "virtual CPU" if platform_name == "cpu" else platform_name, "batch_size": batch_size,
            "compile_seconds": compile_seconds, "step_ms": 1e3 * step, "images_per_second": batch_size / step}


def run(model_names: Sequence[str] = MODELS, device_counts: Sequence[int] = (1, 2, 4), batch_size: int = 128,
        steps: int = 20, width_divisor: int = 1) -> list[dict]:
    """`measure` for every model x device count (call `use_virtual_cpu_devices` first on a CPU)."""
    return [measure(name, n, batch_size, steps, width_divisor=width_divisor)
            for name in model_names for n in device_counts]


def table(rows: list[dict]) -> str:
    """A plain-text table, with the speed-up over the same model's 1-device row."""
    base = {r["model"]: r["images_per_second"] for r in rows if r["devices"] == 1}
    lines = [f"{'model':<12} {'devices':>7} {'kind':<12} {'batch':>5} {'compile s':>9} {'step ms':>9} "
             f"{'images/s':>10} {'vs 1':>6}"]
    for r in rows:
        speedup = f"{r['images_per_second'] / base[r['model']]:.2f}x" if r["model"] in base else "-"
        lines.append(f"{r['model']:<12} {r['devices']:>7} {r['kind']:<12} {r['batch_size']:>5} "
                     f"{r['compile_seconds']:>9.2f} {r['step_ms']:>9.2f} {r['images_per_second']:>10,.0f} "
                     f"{speedup:>6}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxnets.bench.devices", description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--devices", nargs="+", type=int, default=[1, 2, 4], help="device counts to compare")
    p.add_argument("--batch-size", type=int, default=128, help="global batch (must divide by every device count)")
    p.add_argument("--steps", type=int, default=20, help="timed steps after the compiling one")
    p.add_argument("--width-divisor", type=int, default=1, help="ResNet channels / this (8: a quick smoke run)")
    p.add_argument("--json", default=None, help="also write the rows (and the machine) to this JSON file")
    args = p.parse_args(argv)
    use_virtual_cpu_devices(max(args.devices))
    import jax

    rows = run(args.models, args.devices, args.batch_size, args.steps, args.width_divisor)
    print(table(rows))
    if rows and rows[0]["kind"] == "virtual CPU":
        print(f"virtual CPU devices share this machine's {os.cpu_count()} cores: splitting a step is measured, "
              "not a speed-up")
    if args.json:
        info = {"machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                "jax": jax.__version__, "backend": jax.default_backend()}
        write_json(args.json, {"machine": info, "rows": rows})
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
