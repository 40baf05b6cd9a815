"""optax optimizers and schedules with PyTorch's semantics.

A script ported from PyTorch gets the same trajectory:
  * `sgd`: `torch.optim.SGD` adds `weight_decay * param` to the gradient
    *before* momentum (coupled L2); the first momentum buffer is the gradient.
  * `adam`: `torch.optim.Adam`, weight decay likewise coupled (L2).
  * `adamw`: `torch.optim.AdamW`, decoupled decay `p -= lr * wd * p`.

Weight decay applies to every parameter (BatchNorm scales and biases too),
as `torch.optim` does when given `model.parameters()`.

Schedules advance once per optimizer step (not per epoch).
"""

from __future__ import annotations

import optax


def _constant(lr: float, total_steps: int, warmup_steps: int, step_every: int | None, gamma: float):
    return optax.constant_schedule(lr)


def _step(lr: float, total_steps: int, warmup_steps: int, step_every: int | None, gamma: float):
    every = step_every or max(1, total_steps // 3)
    return optax.exponential_decay(lr, transition_steps=every, decay_rate=gamma, staircase=True)


def _cosine(lr: float, total_steps: int, warmup_steps: int, step_every: int | None, gamma: float):
    warmup = min(warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(0.0 if warmup else lr, lr, warmup, max(total_steps, warmup + 1), 0.0)


_SCHEDULES = {"constant": _constant, "step": _step, "cosine": _cosine}
SCHEDULES = tuple(_SCHEDULES)


def make_schedule(kind: str, lr: float, total_steps: int, *, warmup_steps: int = 0, step_every: int | None = None,
                  gamma: float = 0.1) -> optax.Schedule:
    """A learning-rate schedule.

    Args:
      kind: 'constant'; 'step' (`StepLR`: multiply by `gamma` every
        `step_every` steps, default a third of the run); or 'cosine'
        (linear warmup from 0 over `warmup_steps`, then cosine to 0 at
        `total_steps`, as `CosineAnnealingLR` stepped per iteration).
      lr: peak learning rate.
      total_steps: length of the run in optimizer steps.

    Raises:
      ValueError: `kind` is not one of `SCHEDULES`.
    """
    if kind not in _SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; choose one of {SCHEDULES}")
    return _SCHEDULES[kind](lr, total_steps, warmup_steps, step_every, gamma)


def sgd(lr: float | optax.Schedule, momentum: float = 0.0, nesterov: bool = False,
        weight_decay: float = 0.0) -> optax.GradientTransformation:
    """`torch.optim.SGD(params, lr, momentum, weight_decay=..., nesterov=...)`."""
    return optax.chain(
        optax.add_decayed_weights(weight_decay) if weight_decay else optax.identity(),
        optax.sgd(lr, momentum=momentum or None, nesterov=nesterov),
    )


def adam(lr: float | optax.Schedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
         weight_decay: float = 0.0) -> optax.GradientTransformation:
    """`torch.optim.Adam(params, lr, betas=(b1, b2), eps, weight_decay)` (L2 added to the gradient)."""
    return optax.chain(
        optax.add_decayed_weights(weight_decay) if weight_decay else optax.identity(),
        optax.adam(lr, b1=b1, b2=b2, eps=eps),
    )


def adamw(lr: float | optax.Schedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          weight_decay: float = 0.01) -> optax.GradientTransformation:
    """`torch.optim.AdamW(params, lr, betas, eps, weight_decay)` (decoupled decay)."""
    return optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


# name -> the optimizer from (lr, momentum, nesterov, weight_decay); momentum and nesterov are SGD's only.
_OPTIMIZERS = {
    "sgd": lambda lr, momentum, nesterov, weight_decay: sgd(lr, momentum, nesterov, weight_decay),
    "adam": lambda lr, momentum, nesterov, weight_decay: adam(lr, weight_decay=weight_decay),
    "adamw": lambda lr, momentum, nesterov, weight_decay: adamw(lr, weight_decay=weight_decay),
}
OPTIMIZERS = tuple(_OPTIMIZERS)


def create(name: str, lr: float | optax.Schedule, *, momentum: float = 0.9, nesterov: bool = False,
           weight_decay: float = 0.0) -> optax.GradientTransformation:
    """An optimizer by name (`OPTIMIZERS`); `momentum`/`nesterov` apply to SGD only.

    Raises:
      ValueError: `name` is not one of `OPTIMIZERS`.
    """
    if name not in _OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")
    return _OPTIMIZERS[name](lr, momentum, nesterov, weight_decay)
