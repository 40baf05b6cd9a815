"""Input pipeline throughput next to the train step it feeds (same machine, same run)."""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np

from jaxnets import data, models
from jaxnets.training import TrainState, make_steps, optimizers


def pipeline_throughput(images: np.ndarray, labels: np.ndarray, batch_size: int = 128, epochs: int = 2,
                        seed: int = 0, resident: bool | None = None) -> dict:
    """Images/s of `data.Loader` with crop + flip + normalise, each batch forced to completion.

    `resident` as in `data.Loader`: batches cut on the device (`True`), on the
    host (`False`) or the backend's default (`None`).
    """
    preprocess = data.Preprocess.for_dataset("cifar10", images, augment=True)
    loader = data.Loader(images, labels, batch_size, preprocess=preprocess, train=True, seed=seed, resident=resident)
    for batch in loader.epoch(0):  # compile the preprocessing once
        batch.image.block_until_ready()
    start, count = time.perf_counter(), 0
    for epoch in range(1, epochs + 1):
        for batch in loader.epoch(epoch):
            batch.image.block_until_ready()
            count += batch_size
    seconds = time.perf_counter() - start
    return {"images_per_s": count / seconds, "batches": count // batch_size, "seconds": seconds,
            "resident": loader.resident}


def train_step_rate(model_name: str = "resnet18", batch_size: int = 128, steps: int = 3, seed: int = 0) -> dict:
    """Images/s of the jitted train step (after compilation)."""
    model = models.create(model_name)
    state = TrainState.create(model, optimizers.sgd(0.1, momentum=0.9, weight_decay=5e-4), seed=seed)
    step = make_steps(mode="jit").train
    batch = data.synthetic_batch(model.input_shape, batch_size, seed=seed)
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - start) / steps
    return {"images_per_s": batch_size / seconds, "step_s": seconds}


def run(data_dir: str | Path | None = None, batch_size: int = 128, step_steps: int = 3, *,
        model: str = "resnet18", num_examples: int = 10_000) -> dict:
    """The issue-3 benchmark: pipeline images/s vs a jitted train step's images/s.

    Uses the real CIFAR-10 files in `data_dir` when given, else `num_examples`
    synthetic CIFAR-shaped images. `pipeline` is the Loader as `fit` builds it
    on this backend; `host` and `resident` time both placements of the batch
    cut, whichever is the default. `train` is `model`'s jitted train step
    (a model that takes 32x32x3 images) and `ratio` is pipeline / train images/s:
    above 1, the input pipeline keeps up with the step.
    """
    if data_dir is not None:
        # Throughput needs real images, not all 50,000 of them: a trimmed set (../shared/data/cifar10-subset) will do.
        ds = data.load("cifar10", "train", source="files", data_dir=data_dir, strict=False)
    else:
        ds = data.load("synthetic", shape=(32, 32, 3), num_examples=num_examples)
    placements = {name: pipeline_throughput(ds.images, ds.labels, batch_size, resident=resident)
                  for name, resident in (("host", False), ("resident", True))}
    pipe = placements["resident" if data.keeps_data_on_device(jax.default_backend(), ds.images.nbytes, None)
                      else "host"]
    step = train_step_rate(model, batch_size, step_steps)
    return {"dataset": f"{ds.name} ({len(ds)} images)", "batch_size": batch_size, "device": str(jax.devices()[0]),
            "pipeline": pipe, **placements, "model": model, "train": step,
            "ratio": pipe["images_per_s"] / step["images_per_s"]}
