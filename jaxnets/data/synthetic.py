"""Random stand-in batches for benchmarks and tests: one seeded recipe, built here only.

Unlike `load_synthetic` (a learnable uint8 data set that goes through the
input pipeline), these are device batches of already-normalised noise, for
timing a step or checking that two ways of running it agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from jaxnets.data.pipeline import Batch


def synthetic_batches(shape: Sequence[int], batch_size: int, n_batches: int = 1, *, num_classes: int = 10,
                      seed: int = 0, dtype=jnp.float32) -> list[Batch]:
    """`n_batches` batches of standard-normal images and uniform labels, nothing masked.

    One NumPy generator seeded with `seed` draws each batch's images, then its
    labels, batch after batch: batch `i` is the same whatever `n_batches` is.

    Args:
      shape: one example's shape, without the batch axis (`model.input_shape`).
      batch_size: examples per batch.
      n_batches: how many batches.
      num_classes: labels are drawn from `[0, num_classes)`.
      seed: the generator's seed.
      dtype: the images' dtype (drawn in float32, then cast).

    Returns:
      `Batch(image [batch_size, *shape] dtype, label [batch_size] int32, mask [batch_size] bool, all True)` each.

    Raises:
      ValueError: `batch_size`, `n_batches` or `num_classes` below 1.
    """
    for name, value in (("batch_size", batch_size), ("n_batches", n_batches), ("num_classes", num_classes)):
        if value < 1:
            raise ValueError(f"synthetic_batches: {name} must be at least 1, got {value}")
    rng = np.random.default_rng(seed)
    return [
        Batch(jnp.asarray(rng.normal(size=(batch_size, *shape)).astype(np.float32), dtype),
              jnp.asarray(rng.integers(0, num_classes, batch_size).astype(np.int32)),
              jnp.ones(batch_size, bool))
        for _ in range(n_batches)
    ]


def synthetic_batch(shape: Sequence[int], batch_size: int, *, num_classes: int = 10, seed: int = 0,
                    dtype=jnp.float32) -> Batch:
    """The first batch of `synthetic_batches(shape, batch_size, 1, ...)` (see there)."""
    return synthetic_batches(shape, batch_size, 1, num_classes=num_classes, seed=seed, dtype=dtype)[0]
