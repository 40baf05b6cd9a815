"""The train and eval steps: pure functions, run eagerly or under one `jax.jit`.

PyTorch's loop body `zero_grad(); out = model(x); loss.backward(); opt.step()`
is here one pure function `train_step(state, batch) -> (state, metrics)`:
gradients are returned by `jax.value_and_grad` (nothing accumulates in
`.grad`, so there is nothing to zero), and the optimizer update returns a new
state. `mode='jit'` compiles the whole step (forward, backward, update) into
one XLA program and donates the old state's buffers; `mode='eager'` calls the
very same function, op by op — the dynamic graph.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnets import backend
from jaxnets.data import Batch
from jaxnets.training.losses import correct, get_loss
from jaxnets.training.state import TrainState

MODES = ("jit", "eager")
Metrics = dict[str, jax.Array]  # sums over the real (unmasked) examples of a batch


class Steps(NamedTuple):
    """A model's train and eval steps, in one execution mode."""

    train: Callable[[TrainState, Batch], tuple[TrainState, Metrics]]
    eval: Callable[[TrainState, Batch], Metrics]
    mode: str


def _batch_metrics(logits: jax.Array, labels: jax.Array, per_example: jax.Array, mask: jax.Array,
                   classification: bool) -> Metrics:
    weight = mask.astype(per_example.dtype)  # float64 losses stay float64 (strict promotion)
    metrics = {"loss_sum": jnp.sum(per_example * weight), "count": jnp.sum(weight)}
    if classification:
        metrics["correct"] = jnp.sum(correct(logits, labels).astype(weight.dtype) * weight)
        if logits.shape[-1] > 10:
            metrics["correct_top5"] = jnp.sum(correct(logits, labels, 5).astype(weight.dtype) * weight)
    return metrics


def make_train_step(loss: str = "cross_entropy", label_smoothing: float = 0.0):
    """`train_step(state, batch) -> (new_state, metrics)`, pure.

    The loss is the mean over `batch.mask` (PyTorch's `reduction='mean'`);
    BatchNorm runs in train mode and its running statistics come back in the
    new state; dropout draws from `fold_in(state.key, state.step)`, so masks
    differ between steps yet a resumed run repeats them.
    """
    loss_fn = get_loss(loss, label_smoothing)
    classification = loss == "cross_entropy"

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        dropout_key = jax.random.fold_in(state.key, state.step)
        weight = batch.mask.astype(jnp.float32)

        def objective(params):
            variables = {"params": params, "batch_stats": state.batch_stats} if state.batch_stats else {"params": params}
            logits, updates = state.apply_fn(variables, batch.image, train=True, mutable=["batch_stats"],
                                             rngs={"dropout": dropout_key})
            per_example = loss_fn(logits, batch.label)
            w = weight.astype(per_example.dtype)  # float64 losses stay float64 (strict promotion)
            return jnp.sum(per_example * w) / jnp.maximum(jnp.sum(w), 1.0), (logits, per_example, updates)

        (_, (logits, per_example, updates)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        with jax.numpy_dtype_promotion("standard"):  # optax is not strict-promotion clean (Adam's `decay**count`)
            param_updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, param_updates),
            batch_stats=updates.get("batch_stats", state.batch_stats),
            opt_state=opt_state,
        )
        return new_state, _batch_metrics(logits, batch.label, per_example, batch.mask, classification)

    return train_step


def make_eval_step(loss: str = "cross_entropy"):
    """`eval_step(state, batch) -> metrics`: eval mode (running BatchNorm stats, no dropout), no gradients."""
    loss_fn = get_loss(loss)
    classification = loss == "cross_entropy"

    def eval_step(state: TrainState, batch: Batch) -> Metrics:
        logits = state.apply_fn(state.variables, batch.image, train=False)
        return _batch_metrics(logits, batch.label, loss_fn(logits, batch.label), batch.mask, classification)

    return eval_step


def make_steps(loss: str = "cross_entropy", mode: str = "jit", label_smoothing: float = 0.0) -> Steps:
    """Build both steps for `mode` ('jit': one compiled program each, old state donated; 'eager': op by op)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
    train_step, eval_step = make_train_step(loss, label_smoothing), make_eval_step(loss)
    if mode == "jit":
        return Steps(backend.jit(train_step, donate_argnums=(0,)), backend.jit(eval_step), mode)
    return Steps(train_step, eval_step, mode)


def summarize(totals: Metrics) -> dict[str, float]:
    """Sums -> means: {'loss', 'accuracy'[, 'top5']} as Python floats (one host sync)."""
    totals = jax.device_get(totals)
    count = max(float(totals["count"]), 1.0)
    out = {"loss": float(totals["loss_sum"]) / count}
    if "correct" in totals:
        out["accuracy"] = float(totals["correct"]) / count
    if "correct_top5" in totals:
        out["top5"] = float(totals["correct_top5"]) / count
    return out


def evaluate(steps: Steps, state: TrainState, loader) -> dict[str, float]:
    """Mean loss/accuracy over every example of an evaluation `Loader`."""
    totals = None
    for batch in loader:
        metrics = steps.eval(state, batch)
        totals = metrics if totals is None else jax.tree.map(jnp.add, totals, metrics)
    if totals is None:
        raise ValueError("evaluation loader yielded no batches")
    return summarize(totals)


@backend.jit
def _predicted_classes(state: TrainState, images: jax.Array) -> jax.Array:
    """`[B]` argmax of the eval-mode logits; compiled once per model and batch shape."""
    return jnp.argmax(state.apply_fn(state.variables, images, train=False), axis=-1)


def predict(state: TrainState, loader) -> tuple[np.ndarray, np.ndarray]:
    """`(labels, predicted classes)` for every real example of an evaluation `Loader` (eval mode, jitted)."""
    labels, predictions = [], []
    for batch in loader:
        keep = np.asarray(batch.mask)
        labels.append(np.asarray(batch.label)[keep])
        predictions.append(np.asarray(_predicted_classes(state, batch.image))[keep])
    return np.concatenate(labels), np.concatenate(predictions)
