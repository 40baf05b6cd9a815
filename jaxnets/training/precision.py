"""Mixed precision: compute in bfloat16 / float16, keep float32 master weights, scale float16 losses.

PyTorch's AMP (`autocast` + `GradScaler`) the JAX way:

* **Compute dtype** is a field of every model (`models.create(name,
  dtype=jnp.bfloat16)`): inputs and activations are cast to it, while the
  parameters stay float32 (flax's `param_dtype`), BatchNorm computes its
  statistics and keeps its running averages in float32, and every model
  returns float32 logits, so the loss and the metrics are float32.
* **Dynamic loss scaling** (float16 only: its range ends at 65,504 and small
  gradients underflow to 0; bfloat16 has float32's range and needs none):
  `dynamic_loss_scale(tx)` wraps an optax optimizer. The train step multiplies
  the loss by the current scale (`loss_scale(opt_state)`), the wrapper divides
  the gradients by it, and `optax.apply_if_finite` skips the update (and counts
  it) when a gradient overflowed; the scale halves after an overflow and
  doubles after `growth_interval` finite steps in a row, as `torch.amp.GradScaler`
  does. Everything lives in the optimizer state, so checkpoints carry it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

DTYPES = ("float32", "bfloat16", "float16")


def compute_dtype(name: str) -> jnp.dtype:
    """The jnp dtype of a `DTYPES` name.

    Raises:
      ValueError: `name` is not one of `DTYPES`.
    """
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {DTYPES}")
    return jnp.dtype(name)


def needs_loss_scaling(name: str) -> bool:
    """Whether a compute dtype needs dynamic loss scaling (float16 only)."""
    return compute_dtype(name) == jnp.float16


class LossScaleState(NamedTuple):
    """Optimizer state of `dynamic_loss_scale`."""

    scale: jax.Array  # [] float32, what the loss is multiplied by
    good_steps: jax.Array  # [] int32, finite steps since the scale last changed
    inner: optax.ApplyIfFiniteState  # the wrapped optimizer's state, and the skipped-step counters


def dynamic_loss_scale(tx: optax.GradientTransformation, *, initial_scale: float = 2.0**15,
                       growth_interval: int = 2000, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                       min_scale: float = 1.0, max_consecutive_skips: int = 100) -> optax.GradientTransformation:
    """Wrap `tx` to take gradients of `loss * scale` and skip the steps whose gradients overflowed.

    The defaults are `torch.amp.GradScaler`'s (initial scale 2**16 there;
    2**15 here, as in `flax.training.dynamic_scale`).

    Args:
      tx: the optimizer, fed unscaled float32 gradients.
      initial_scale: the first scale.
      growth_interval: finite steps in a row after which the scale grows.
      growth_factor: multiplies the scale after `growth_interval` finite steps.
      backoff_factor: multiplies the scale after a step whose gradients are not finite.
      min_scale: the scale never drops below this.
      max_consecutive_skips: after this many skipped steps in a row the update
        is applied anyway (`optax.apply_if_finite`), so a run that truly
        diverged shows NaN weights instead of silently standing still.

    Returns:
      An optax transformation whose state is `LossScaleState`.
    """
    guarded = optax.apply_if_finite(tx, max_consecutive_errors=max_consecutive_skips)

    def init(params: Any) -> LossScaleState:
        return LossScaleState(jnp.asarray(initial_scale, jnp.float32), jnp.zeros((), jnp.int32), guarded.init(params))

    def update(scaled_grads: Any, state: LossScaleState, params: Any = None) -> tuple[Any, LossScaleState]:
        grads = jax.tree.map(lambda g: g / state.scale.astype(g.dtype), scaled_grads)
        updates, inner = guarded.update(grads, state.inner, params)
        finite = inner.last_finite
        grow = state.good_steps + 1 >= growth_interval
        scale = jnp.where(finite, jnp.where(grow, state.scale * growth_factor, state.scale),
                          jnp.maximum(state.scale * backoff_factor, min_scale))
        good_steps = jnp.where(finite & ~grow, state.good_steps + 1, 0).astype(jnp.int32)
        return updates, LossScaleState(scale.astype(jnp.float32), good_steps, inner)

    return optax.GradientTransformation(init, update)


def loss_scale(opt_state: Any) -> jax.Array | None:
    """The current loss scale when `opt_state` is a `dynamic_loss_scale` state, else None (static)."""
    return opt_state.scale if isinstance(opt_state, LossScaleState) else None


def skipped_steps(opt_state: Any) -> jax.Array:
    """`[] int32`: steps skipped so far for non-finite gradients (0 without loss scaling)."""
    return opt_state.inner.total_notfinite if isinstance(opt_state, LossScaleState) else jnp.zeros((), jnp.int32)


def last_step_finite(opt_state: Any) -> jax.Array:
    """`[] bool`: whether the last update was applied (always True without loss scaling)."""
    return opt_state.inner.last_finite if isinstance(opt_state, LossScaleState) else jnp.ones((), bool)
