"""The texts' autograd and regression examples as small pure functions.

The notebooks call these, and the tests assert the numbers they print, so
the lessons can't silently drift.
"""

from __future__ import annotations

import functools
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnets import data, models
from jaxnets.training import TrainState, make_steps, optimizers, train_step


def z_of(x: jax.Array, y: jax.Array) -> jax.Array:
    """The texts' non-scalar function `z = 3 x^2 - y^2` (elementwise)."""
    return 3 * x**2 - y**2


def nonscalar_backward(x=(1.0, 2.0), y=(2.0, 3.0), v=(1.0, 1.0)) -> tuple[jax.Array, jax.Array, jax.Array]:
    """PyTorch's `z.backward(gradient=v)` as a vector-Jacobian product.

    Returns:
      `(z, dx, dy)` with `dx = v * 6x` and `dy = v * -2y`; at the texts' point
      x = [1, 2], y = [2, 3]: dx = [6, 12], dy = [-4, -6].
    """
    x, y, v = (jnp.asarray(a, jnp.float32) for a in (x, y, v))
    z, pullback = jax.vjp(z_of, x, y)
    dx, dy = pullback(v)
    return z, dx, dy


def sgd_update(params: Any, grads: Any, lr: float) -> Any:
    """The texts' manual `w -= lr * w.grad`, as a pure function returning new params."""
    return jax.tree.map(lambda p, g: p - lr * g, params, grads)


def linear_regression_data(n: int = 100, slope: float = 2.0, intercept: float = 5.0, noise: float = 0.5,
                           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`y = slope * x + intercept + noise`, x uniform in [0, 1]. Returns float32 `[n, 1]` arrays."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, 1)).astype(np.float32)
    y = (slope * x + intercept + rng.normal(0, noise, (n, 1))).astype(np.float32)
    return x, y


class LinearFit(NamedTuple):
    slope: float
    intercept: float
    losses: np.ndarray  # [steps] MSE per step


def fit_linear_regression(x: np.ndarray, y: np.ndarray, lr: float = 0.5, steps: int = 500) -> LinearFit:
    """Full-batch gradient descent on MSE with `jax.grad` and `sgd_update`, the whole loop in one `lax.scan`."""
    params = {"w": jnp.zeros(()), "b": jnp.zeros(())}
    x, y = jnp.asarray(x), jnp.asarray(y)

    def loss_fn(p):
        return jnp.mean((p["w"] * x + p["b"] - y) ** 2)

    def step(p, _):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        return sgd_update(p, grads, lr), loss

    params, losses = jax.jit(lambda p: jax.lax.scan(step, p, None, length=steps))(params)
    return LinearFit(float(params["w"]), float(params["b"]), np.asarray(losses))


def fit_full_batch(model, x: np.ndarray, y: np.ndarray, *, loss: str, lr: float = 0.05, steps: int = 2000,
                   seed: int = 0) -> tuple[TrainState, np.ndarray]:
    """Train `model` on all of (x, y) each step with Adam (texts 002/004's small MLPs).

    Args:
      x: float32 `[N, input_dim]`; y: `[N, 1]` float targets ('mse', 'bce').
    Returns:
      the final TrainState and the loss per step.
    """
    tx = optax.adam(lr)
    state = TrainState.create(model, tx, seed=seed)
    batch = data.Batch(jnp.asarray(x), jnp.asarray(y), jnp.ones(len(x), bool))
    step = functools.partial(train_step, loss=loss)

    def body(s, _):
        s, metrics = step(s, batch)
        return s, metrics["loss_sum"] / metrics["count"]

    state, losses = jax.jit(lambda s: jax.lax.scan(body, s, None, length=steps))(state)
    return state, np.asarray(losses)


def two_moons(n: int = 200, noise: float = 0.15, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 2-D binary classification set (two interleaved half circles): x `[n, 2]`, y `[n, 1]` in {0, 1}."""
    rng = np.random.default_rng(seed)
    angle = rng.uniform(0, np.pi, n)
    label = rng.integers(0, 2, n)
    x = np.where(label[:, None] == 0, np.c_[np.cos(angle), np.sin(angle)],
                 np.c_[1 - np.cos(angle), 0.5 - np.sin(angle)])
    x = x + rng.normal(0, noise, x.shape)
    return x.astype(np.float32), label[:, None].astype(np.float32)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """`[K, K]` counts: rows are true classes, columns predicted."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predictions)), 1)
    return matrix


class ModeRun(NamedTuple):
    losses: np.ndarray  # [epochs * steps] mean training loss of every step
    params: Any  # the parameters after the last epoch
    epoch_seconds: list[float]  # wall time of each epoch (the first includes compiling)


def eager_jit_scan(model_name: str = "lenet", *, examples: int = 256, batch_size: int = 32, epochs: int = 2,
                   modes: tuple[str, ...] = ("eager", "jit", "scan"), seed: int = 0,
                   **model_kwargs) -> dict[str, ModeRun]:
    """One training run, three ways: op by op, one program per step, one program per epoch.

    `model_name` trains on the first `examples` embedded digits (augmented:
    crop + flip) with SGD from the same seed in each mode, through
    `make_steps(mode).train_epoch`: the same batches, augmentations and
    dropout keys in every mode, so the losses agree (up to float reordering)
    and only the time differs.

    Returns:
      `{mode: ModeRun(losses, params, epoch_seconds)}`.
    """
    train = data.load("digits", "train")
    images, labels = train.images[:examples], train.labels[:examples]
    preprocess = data.Preprocess.for_dataset("digits", images, augment=True)
    loader = data.Loader(images, labels, batch_size, preprocess=preprocess, train=True, seed=seed)
    initial = TrainState.create(models.create(model_name, **model_kwargs), optimizers.sgd(0.05, momentum=0.9),
                                seed=seed)
    runs = {}
    for mode in modes:
        state = jax.tree.map(jnp.copy, initial)  # each mode its own buffers: jit and scan donate theirs
        steps, losses, seconds = make_steps(mode=mode), [], []
        for epoch in range(epochs):
            start = time.perf_counter()
            state, metrics = steps.train_epoch(state, loader, epoch)
            metrics = jax.device_get(metrics)  # waits for the epoch to finish
            seconds.append(time.perf_counter() - start)
            losses.append(metrics["loss_sum"] / np.maximum(metrics["count"], 1.0))
        runs[mode] = ModeRun(np.concatenate(losses), jax.device_get(state.params), seconds)
    return runs
