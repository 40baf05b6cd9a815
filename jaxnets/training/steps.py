"""The train and eval steps: pure module-level functions, run eagerly, under one `jax.jit`, or scanned.

PyTorch's loop body `zero_grad(); out = model(x); loss.backward(); opt.step()`
is here one pure function `train_step(state, batch) -> (state, metrics)`:
gradients are returned by `jax.value_and_grad` (nothing accumulates in
`.grad`, so there is nothing to zero), and the optimizer update returns a new
state. Options are keyword-only; bind them with `functools.partial` and
compile (or not) yourself, as the flax examples do:

    >>> step = jax.jit(functools.partial(train_step, loss="cross_entropy", learning_rate=schedule),
    ...                donate_argnums=0)
    >>> state, metrics = step(state, batch)

`make_steps(mode=...)` does that binding for the three execution modes, three
views of one computation (same data order, augmentations and dropout keys,
so the same numbers):

* `'eager'`: the very same function, op by op (the dynamic graph);
* `'jit'`: one XLA program per step, the old state donated;
* `'scan'`: one XLA program per *epoch* (`scan_epoch`): `jax.lax.scan` over
  the epoch's batches cut on the device, no Python between steps.

Metrics are a fixed schema (per batch; see `METRICS`): sums over the real
(unmasked) examples, `loss_sum` and `count`, plus `correct` and
`correct_top5` for classification (`loss='cross_entropy'`: top-5 always; with
5 classes or fewer every label is in the top 5), plus, from the train step,
`lr` (the learning rate this step's update used, when the step is given
`learning_rate`) and, with dynamic loss scaling (float16), `skipped` (1 when
the step's gradients overflowed and the update was skipped) and
`loss_scale`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnets import backend
from jaxnets.data import Batch, Preprocess
from jaxnets.data.pipeline import prepare
from jaxnets.training import precision
from jaxnets.training.losses import correct, get_loss, is_classification
from jaxnets.training.state import TrainState

#: How a step runs: one compiled program (`jit`), op by op (`eager`), or a whole epoch in one `lax.scan`.
MODES = ("jit", "eager", "scan")
Metrics = dict[str, jax.Array]  # one batch's metrics (`METRICS`), or an epoch's, stacked `[S]` or reduced
# Metric name -> how a run of batches combines it: 'sum' (add them) or 'last' (keep the latest).
METRICS: dict[str, str] = {"loss_sum": "sum", "count": "sum", "correct": "sum", "correct_top5": "sum",
                           "skipped": "sum", "lr": "last", "loss_scale": "last"}
TOP_K = 5


class Steps(NamedTuple):
    """A model's train and eval steps, in one execution mode (`make_steps`).

    `train` is one step; `train_epoch(state, loader, epoch)` trains one epoch
    of a training `Loader` and returns the new state and the per-step
    metrics stacked `[S]`: a Python loop over `train` ('eager', 'jit') or one
    compiled scan ('scan'). `fit` drives `train` step by step (a progress bar
    per step) except in 'scan' mode, where it calls `train_epoch`.
    """

    train: Callable[[TrainState, Batch], tuple[TrainState, Metrics]]
    eval: Callable[[TrainState, Batch], Metrics]
    mode: str
    train_epoch: Callable[[TrainState, Any, int], tuple[TrainState, Metrics]]


def _batch_metrics(logits: jax.Array, labels: jax.Array, per_example: jax.Array, mask: jax.Array,
                   classification: bool) -> Metrics:
    weight = mask.astype(jnp.float32)
    metrics = {"loss_sum": jnp.sum(per_example * weight.astype(per_example.dtype)), "count": jnp.sum(weight)}
    if classification:
        metrics["correct"] = jnp.sum(correct(logits, labels).astype(weight.dtype) * weight)
        metrics["correct_top5"] = jnp.sum(correct(logits, labels, min(TOP_K, logits.shape[-1])).astype(weight.dtype)
                                          * weight)
    return metrics


def _learning_rate(learning_rate: float | optax.Schedule, count: jax.Array) -> jax.Array:
    with jax.numpy_dtype_promotion("standard"):  # optax's schedules mix Python floats and int32 counts
        value = learning_rate(count) if callable(learning_rate) else learning_rate
    return jnp.asarray(value, jnp.float32)


def _micro_batches(x: jax.Array, k: int) -> jax.Array:
    """`[B, ...] -> [k, B/k, ...]`, micro-batch `i` holding examples `i, i+k, i+2k, ...`.

    Strided rather than contiguous so that a batch sharded over devices on its
    first axis stays evenly sharded within every micro-batch (axis 1).
    """
    return x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)


def check_accumulate(accumulate: int, batch_size: int | None = None) -> None:
    """Refuse an `accumulate` that is not a positive integer, or (given `batch_size`) that does not divide it.

    Raises:
      ValueError: "accumulate must be a positive integer (got ...)", or
        "batch_size (B) must be a multiple of accumulate (K): ...".
    """
    if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
        raise ValueError(f"accumulate must be a positive integer (got {accumulate!r})")
    if batch_size is not None and batch_size % accumulate:
        raise ValueError(f"batch_size ({batch_size}) must be a multiple of accumulate ({accumulate}): a batch of "
                         f"{batch_size} does not split into accumulate={accumulate} equal micro-batches")


def train_step(state: TrainState, batch: Batch, *, loss: str = "cross_entropy", label_smoothing: float = 0.0,
               learning_rate: float | optax.Schedule | None = None,
               accumulate: int = 1) -> tuple[TrainState, Metrics]:
    """One optimizer step: forward, loss, backward, update. Pure; jit it or not.

    The loss is the mean over `batch.mask` (PyTorch's `reduction='mean'`);
    BatchNorm runs in train mode and its running statistics come back in the
    new state; dropout draws from `fold_in(state.key, state.step)`, so masks
    differ between steps yet a resumed run repeats them. With a
    `precision.dynamic_loss_scale` optimizer (float16) the loss is scaled
    before the backward pass, and a step whose gradients overflowed leaves
    parameters, optimizer moments and BatchNorm statistics as they were.

    Args:
      state: the run's state; `state.step` counts the calls.
      batch: `image [B, ...]` float32, `label [B]`, `mask [B]` bool.
      loss: a name of `losses.LOSSES`.
      label_smoothing: cross-entropy only.
      learning_rate: the optimizer's learning rate or schedule (`optax`
        schedule of the optimizer step), reported as the metric `lr`; None:
        no `lr` metric.
      accumulate: split the batch into this many micro-batches (examples
        `i, i+K, i+2K, ...` form micro-batch `i`), run forward and backward on
        one at a time (activation memory of a `B/K` batch) and sum their
        gradients into one optimizer step. Without BatchNorm this equals the
        whole batch at once (up to float reordering). With BatchNorm each
        micro-batch is normalised over its own statistics (as it would be in
        PyTorch with accumulation), and the running averages are updated K
        times per step, once per micro-batch.

    Returns:
      `(new_state, metrics)`: metrics as in the module docstring.

    Raises:
      ValueError: unknown loss, `accumulate < 1`, or a batch size that is not a
        multiple of `accumulate` (at trace time).
    """
    check_accumulate(accumulate, batch.label.shape[0])
    loss_fn = get_loss(loss, label_smoothing)
    classification = is_classification(loss)
    scale = precision.loss_scale(state.opt_state)  # None unless float16 loss scaling
    dropout_key = jax.random.fold_in(state.key, state.step)
    # The whole batch's example count divides every micro-batch's loss sum: their gradients add up to the mean's.
    denominator = jnp.maximum(jnp.sum(batch.mask.astype(jnp.float32)), 1.0)

    def gradients(params, batch_stats, micro: Batch, key):
        def objective(params):
            variables = {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}
            logits, updates = state.apply_fn(variables, micro.image, train=True, mutable=["batch_stats"],
                                             rngs={"dropout": key})
            per_example = loss_fn(logits, micro.label)
            mean = jnp.sum(per_example * micro.mask.astype(per_example.dtype)) / denominator.astype(per_example.dtype)
            return (mean if scale is None else mean * scale), (logits, per_example, updates)

        (_, (logits, per_example, updates)), grads = jax.value_and_grad(objective, has_aux=True)(params)
        metrics = _batch_metrics(logits, micro.label, per_example, micro.mask, classification)
        return grads, updates.get("batch_stats", batch_stats), metrics

    if accumulate == 1:
        grads, batch_stats, metrics = gradients(state.params, state.batch_stats, batch, dropout_key)
    else:
        micro_batches = jax.tree.map(functools.partial(_micro_batches, k=accumulate), batch)

        def one_micro_batch(carry, inputs):
            grad_sum, batch_stats = carry
            index, micro = inputs
            grads, batch_stats, metrics = gradients(state.params, batch_stats, micro,
                                                    jax.random.fold_in(dropout_key, index))
            return (jax.tree.map(jnp.add, grad_sum, grads), batch_stats), metrics

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        (grads, batch_stats), stacked = jax.lax.scan(one_micro_batch, (zeros, state.batch_stats),
                                                     (jnp.arange(accumulate), micro_batches))
        metrics = jax.tree.map(lambda m: jnp.sum(m, axis=0), stacked)

    with jax.numpy_dtype_promotion("standard"):  # optax is not strict-promotion clean (Adam's `decay**count`)
        param_updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    if scale is not None:  # an overflowed step keeps the old BatchNorm statistics too (optax kept the rest)
        finite = precision.last_step_finite(opt_state)
        batch_stats = jax.tree.map(lambda new, old: jnp.where(finite, new, old), batch_stats, state.batch_stats)
        metrics["skipped"] = 1 - finite.astype(jnp.int32)
        metrics["loss_scale"] = scale
    if learning_rate is not None:  # skipped steps do not advance the optimizer's schedule
        metrics["lr"] = _learning_rate(learning_rate, state.step - precision.skipped_steps(state.opt_state))
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, param_updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
    )
    return new_state, metrics


def eval_step(state: TrainState, batch: Batch, *, loss: str = "cross_entropy") -> Metrics:
    """Metrics of one batch in eval mode (running BatchNorm statistics, no dropout), no gradients.

    Args:
      batch: `image [B, ...]` float32, `label [B]`, `mask [B]` bool (False: padding, not counted).
    Returns:
      `{'loss_sum', 'count'[, 'correct', 'correct_top5']}` (classification adds the last two).
    """
    loss_fn = get_loss(loss)
    logits = state.apply_fn(state.variables, batch.image, train=False)
    return _batch_metrics(logits, batch.label, loss_fn(logits, batch.label), batch.mask, is_classification(loss))


def scan_epoch(state: TrainState, images: jax.Array, labels: jax.Array, mask: jax.Array, key: jax.Array,
               epoch: jax.Array, *, train_step: Callable[[TrainState, Batch], tuple[TrainState, Metrics]],
               preprocess: Preprocess) -> tuple[TrainState, Metrics]:
    """One epoch of training as one `jax.lax.scan` over its batches: jit it to compile the whole epoch.

    Batch `s` is preprocessed inside the scan by `data.pipeline.prepare` with
    the key `fold_in(fold_in(key, epoch), s)`, exactly as the `Loader` does
    batch by batch, so scanning gives the numbers the step-by-step loop gives.

    Args:
      state: the run's state (donate it when jitting).
      images: uint8 `[S, B, H, W, C]`: the epoch's batches in order, on the device.
      labels: int32 `[S, B]`.
      mask: bool `[S, B]`.
      key: the Loader's PRNG key (`Loader.key`).
      epoch: `[]` int, the epoch number (folded into the augmentation keys).
      train_step: `(state, batch) -> (state, metrics)`, e.g. `functools.partial(train_step, loss=...)`.
      preprocess: normalisation and augmentation (static).

    Returns:
      `(state, metrics)`: the state after `S` steps and each step's metrics stacked `[S]`.
    """
    def body(state, inputs):
        step, images, labels, mask = inputs
        return train_step(state, prepare(key, epoch, step, images, labels, mask, preprocess, True))

    return jax.lax.scan(body, state, (jnp.arange(images.shape[0]), images, labels, mask))


def _jit_per_dtype(fun: Callable, **kwargs) -> Callable:
    """`fun(state, ...)` compiled with `backend.jit`, once per compute dtype of the state's model.

    The dtype picks the CPU's convolution library (`backend.conv_library`:
    bfloat16 convolutions may go to oneDNN, float32 ones stay in Eigen), so a
    bfloat16 model gets its own jit; each jit keeps its own cache as usual.
    """
    jitted: dict[jnp.dtype, Callable] = {}

    def call(state: TrainState, *args, **kw):
        dtype = state.compute_dtype
        if dtype not in jitted:
            jitted[dtype] = backend.jit(fun, dtype=dtype, **kwargs)
        return jitted[dtype](state, *args, **kw)

    return call


def _loop_epoch(train: Callable, state: TrainState, loader, epoch: int) -> tuple[TrainState, Metrics]:
    rows = []
    for batch in loader.epoch(epoch):
        state, metrics = train(state, batch)
        rows.append(metrics)
    return state, jax.tree.map(lambda *xs: jnp.stack(xs), *rows)


def make_steps(loss: str = "cross_entropy", mode: str = "jit", label_smoothing: float = 0.0, *,
               learning_rate: float | optax.Schedule | None = None, accumulate: int = 1) -> Steps:
    """`train_step` and `eval_step` bound to these options, for `mode`.

    'jit': `backend.jit` (jaxnets' CPU compiler options), the old state donated;
    'eager': the bound functions themselves, op by op; 'scan': a jitted step
    as in 'jit', plus `train_epoch` compiling a whole epoch (`scan_epoch`).

    Raises:
      ValueError: unknown mode or loss, or `accumulate < 1`.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
    get_loss(loss, label_smoothing)  # unknown names fail here, not at the first step
    check_accumulate(accumulate)
    train = functools.partial(train_step, loss=loss, label_smoothing=label_smoothing, learning_rate=learning_rate,
                              accumulate=accumulate)
    evaluate_ = functools.partial(eval_step, loss=loss)
    if mode == "eager":
        return Steps(train, evaluate_, mode, functools.partial(_loop_epoch, train))
    jitted = _jit_per_dtype(train, donate_argnums=0)
    if mode == "jit":
        return Steps(jitted, _jit_per_dtype(evaluate_), mode, functools.partial(_loop_epoch, jitted))
    compiled_epoch = _jit_per_dtype(functools.partial(scan_epoch, train_step=train), static_argnames=("preprocess",),
                                    donate_argnums=0)

    def train_epoch(state: TrainState, loader, epoch: int) -> tuple[TrainState, Metrics]:
        if not loader.train:
            raise ValueError("train_epoch needs a training Loader (train=True)")
        images, labels, mask = loader.epoch_arrays(epoch)
        return compiled_epoch(state, images, labels, mask, loader.key, epoch, preprocess=loader.preprocess)

    return Steps(jitted, _jit_per_dtype(evaluate_), mode, train_epoch)


def merge(totals: Metrics | None, metrics: Metrics) -> Metrics:
    """Fold one batch's metrics into running totals (sums add, `lr`/`loss_scale` keep the latest)."""
    if totals is None:
        return dict(metrics)
    return {k: v if METRICS.get(k) == "last" else totals[k] + v for k, v in metrics.items()}


def reduce_steps(stacked: Metrics) -> dict[str, np.ndarray]:
    """Stacked per-step metrics `[S]` -> epoch totals, on the host.

    Added step after step in float32, the order in which `merge` adds them
    in a step-by-step loop, so both give the same bits.
    """
    stacked = jax.device_get(stacked)
    totals = None
    for step in range(len(next(iter(stacked.values())))):
        totals = merge(totals, {k: v[step] for k, v in stacked.items()})
    return totals


def summarize(totals: Metrics) -> dict[str, float]:
    """Sums -> means, as Python floats (one host sync).

    Returns:
      `{'loss'[, 'accuracy', 'top5'][, 'lr'][, 'skipped_steps', 'loss_scale']}`.
    """
    totals = jax.device_get(totals)
    count = max(float(totals["count"]), 1.0)
    out = {"loss": float(totals["loss_sum"]) / count}
    if "correct" in totals:
        out["accuracy"] = float(totals["correct"]) / count
        out["top5"] = float(totals["correct_top5"]) / count
    if "lr" in totals:
        out["lr"] = float(totals["lr"])
    if "skipped" in totals:
        out["skipped_steps"] = int(totals["skipped"])
        out["loss_scale"] = float(totals["loss_scale"])
    return out


def evaluate(steps: Steps, state: TrainState, loader) -> dict[str, float]:
    """Mean loss/accuracy (and top-5 for classification) over every example of an evaluation `Loader`."""
    totals = None
    in_lockstep = jax.process_count() > 1
    for batch in loader:
        totals = merge(totals, steps.eval(state, batch))
        if in_lockstep:
            # Eval steps do not depend on each other, so XLA:CPU may run two of them at once, and each holds a
            # cross-process all-reduce of its sums: two processes that start them in different orders wait on
            # each other for ever (seen in tests/test_distributed). One batch at a time keeps the order.
            jax.block_until_ready(totals)
    if totals is None:
        raise ValueError("evaluation loader yielded no batches")
    return summarize(totals)


def _predicted_classes_of(state: TrainState, images: jax.Array) -> jax.Array:
    """`[B]` argmax of the eval-mode logits."""
    return jnp.argmax(state.apply_fn(state.variables, images, train=False), axis=-1)


_predicted_classes = _jit_per_dtype(_predicted_classes_of)  # compiled once per model, dtype and batch shape


def predict(state: TrainState, loader) -> tuple[np.ndarray, np.ndarray]:
    """`(labels, predicted classes)` for every real example of an evaluation `Loader` (eval mode, jitted)."""
    labels, predictions = [], []
    for batch in loader:
        keep = np.asarray(batch.mask)
        labels.append(np.asarray(batch.label)[keep])
        predictions.append(np.asarray(_predicted_classes(state, batch.image))[keep])
    return np.concatenate(labels), np.concatenate(predictions)
