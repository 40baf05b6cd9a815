"""Small builders shared by the training tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnets import data, models
from jaxnets.training import TrainState, optimizers


def batches(shape, n_batches: int, batch_size: int, num_classes: int = 10, seed: int = 0) -> list[data.Batch]:
    """Random normalised batches of `shape` (no batch axis)."""
    return data.synthetic_batches(shape, batch_size, n_batches, num_classes=num_classes, seed=seed)


def train_state(name: str, tx=None, seed: int = 0, **kwargs) -> TrainState:
    model = models.create(name, **kwargs)
    return TrainState.create(model, tx or optimizers.sgd(0.05, momentum=0.9, weight_decay=5e-4), seed=seed)


def max_abs_diff(a, b) -> float:
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
