"""Whole epochs timed in each execution mode and compute dtype: `python -m jaxnets.bench.epochs`.

    >>> from jaxnets.bench import epochs
    >>> rows = epochs.run(["mlp", "lenet"], modes=("eager", "jit", "scan"), dtypes=("float32", "bfloat16"))

Unlike a single-step benchmark, this times what a user's epoch costs:
batches cut and augmented on the device, the per-step Python dispatch of
'eager' and 'jit', or none of it in 'scan' (one program per epoch). Each
case reports the first epoch (compiling included) apart from the steady
epochs after it. Command line (prints a table and, with `--json`, writes the rows):

    python -m jaxnets.bench.epochs --models mlp lenet --modes eager jit scan \\
        --dtypes float32 bfloat16 --batch-size 128 --steps 50 --epochs 5 --json epochs.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence

import jax
import numpy as np

from jaxnets import data, models
from jaxnets.training import optimizers, precision
from jaxnets.training.state import TrainState
from jaxnets.training.steps import MODES, make_steps

# MNIST-shaped inputs for the models that take any size (the MLP flattens them).
_IMAGE_SHAPE = {"mlp": (28, 28, 1)}


def case(model_name: str, mode: str, dtype: str = "float32", *, batch_size: int = 128, steps: int = 50,
         epochs: int = 3, seed: int = 0) -> dict:
    """Train `epochs` epochs of `steps` batches of seeded random uint8 images (augmented) and time each.

    Returns:
      `{'model', 'mode', 'dtype', 'batch_size', 'steps_per_epoch', 'first_epoch_s'` (compiling included),
      `'epoch_s_median'` (the later epochs), `'images_per_s'}`.
    """
    if epochs < 2:
        raise ValueError("epochs must be >= 2: the first one compiles, the others are timed")
    model = models.create(model_name, dtype=precision.compute_dtype(dtype))
    shape = _IMAGE_SHAPE.get(model_name, model.input_shape)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (batch_size * steps, *shape), dtype=np.uint8)
    labels = rng.integers(0, 10, batch_size * steps).astype(np.int32)
    loader = data.Loader(images, labels, batch_size, preprocess=data.Preprocess(crop_padding=4, flip=True), train=True,
                         seed=seed)
    tx = optimizers.sgd(0.01, momentum=0.9, weight_decay=5e-4)
    if precision.needs_loss_scaling(dtype):
        tx = precision.dynamic_loss_scale(tx)
    state = TrainState.create(model, tx, seed=seed)
    train_steps = make_steps(mode=mode)
    seconds = []
    for epoch in range(epochs):
        start = time.perf_counter()
        state, metrics = train_steps.train_epoch(state, loader, epoch)
        jax.block_until_ready(metrics)
        seconds.append(time.perf_counter() - start)
    steady = statistics.median(seconds[1:])
    return {"model": model_name, "mode": mode, "dtype": dtype, "batch_size": batch_size, "steps_per_epoch": steps,
            "first_epoch_s": seconds[0], "epoch_s_median": steady, "images_per_s": batch_size * steps / steady}


def run(model_names: Sequence[str] = ("mlp", "lenet"), modes: Sequence[str] = MODES,
        dtypes: Sequence[str] = ("float32",), **kwargs) -> list[dict]:
    """`case` for every model x mode x dtype (`kwargs` go to `case`)."""
    return [case(name, mode, dtype, **kwargs) for name in model_names for dtype in dtypes for mode in modes]


def table(rows: list[dict]) -> str:
    lines = [f"{'model':>9} {'mode':>6} {'dtype':>9} {'first epoch s':>14} {'epoch s':>9} {'images/s':>10}"]
    lines += [f"{r['model']:>9} {r['mode']:>6} {r['dtype']:>9} {r['first_epoch_s']:>14.3f} {r['epoch_s_median']:>9.4f} "
              f"{r['images_per_s']:>10,.0f}" for r in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time whole training epochs: eager vs jit vs scan, by dtype.")
    parser.add_argument("--models", nargs="+", default=["mlp", "lenet"])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=precision.DTYPES)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50, help="batches per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="the first compiles; the others are timed")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    rows = run(args.models, args.modes, args.dtypes, batch_size=args.batch_size, steps=args.steps, epochs=args.epochs)
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
