"""Losses (per example) and metrics, PyTorch's semantics.

Every loss maps `(logits, targets) -> [B]` per-example values, so the step can
mask padding and average exactly like `reduction='mean'`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """`nn.CrossEntropyLoss(label_smoothing=...)` per example.

    Args:
      logits: `[B, K]` float.
      labels: `[B]` int class indices.
    Returns:
      `[B]` float32.
    """
    num_classes = logits.shape[-1]
    targets = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def mse(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """`nn.MSELoss()` per example: mean squared error over the non-batch axes. `[B, ...] -> [B]`."""
    targets = targets.reshape(outputs.shape).astype(outputs.dtype)
    return jnp.mean(jnp.square(outputs - targets).reshape(outputs.shape[0], -1), axis=-1)


def binary_cross_entropy_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """`nn.BCEWithLogitsLoss()` per example (the stable form of Sigmoid + `nn.BCELoss`). `[B, ...] -> [B]`."""
    targets = targets.reshape(logits.shape).astype(logits.dtype)
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, targets).reshape(logits.shape[0], -1), axis=-1)


LOSSES: dict[str, Callable[..., jax.Array]] = {
    "cross_entropy": cross_entropy,
    "mse": mse,
    "bce": binary_cross_entropy_with_logits,
}


CLASSIFICATION_LOSSES = ("cross_entropy",)  # integer class labels: accuracy and top-5 are reported


def is_classification(name: str) -> bool:
    """Whether loss `name` trains a classifier on integer labels (so accuracy and top-k mean something)."""
    return name in CLASSIFICATION_LOSSES


def get_loss(name: str, label_smoothing: float = 0.0) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """A per-example loss by name (`LOSSES`); label smoothing applies to cross-entropy."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    if name == "cross_entropy":  # the one loss that takes label smoothing
        return lambda logits, labels: cross_entropy(logits, labels, label_smoothing)
    if label_smoothing:
        raise ValueError("label_smoothing applies to cross_entropy only")
    return LOSSES[name]


def correct(logits: jax.Array, labels: jax.Array, k: int = 1) -> jax.Array:
    """`[B]` bool: whether the label is among the top-`k` logits."""
    if k == 1:  # argmax gives int64 under x64: compare in the labels' dtype (strict promotion)
        return jnp.argmax(logits, axis=-1).astype(labels.dtype) == labels
    _, top = jax.lax.top_k(logits, k)
    return jnp.any(top.astype(labels.dtype) == labels[:, None], axis=-1)
