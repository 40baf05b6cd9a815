"""Module-level steps, the lr metric, whole-epoch scan, gradient accumulation, mixed precision."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import batches, max_abs_diff
from jaxnets import data, layers, models
from jaxnets.training import TrainConfig, TrainState, data_setup, fit, optimizers, precision
from jaxnets.training.steps import eval_step, make_steps, reduce_steps, train_step

QUIET = dict(log=lambda _: None, progress=False, tensorboard=False)


def _tiny_mlp(**kwargs):
    return models.create("mlp", num_layers=1, hidden_size=16, input_dim=784, output_dim=10, **kwargs)


def _digits_loader(n: int, batch_size: int, augment: bool = True, seed: int = 3) -> data.Loader:
    train = data.load("digits", "train")
    images, labels = train.images[:n], train.labels[:n]
    preprocess = data.Preprocess.for_dataset("digits", images, augment=augment)
    return data.Loader(images, labels, batch_size, preprocess=preprocess, train=True, seed=seed)


class _DropoutNet(nn.Module):
    """A tiny image model with dropout: are scan's dropout keys jit's?"""

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.relu(nn.Dense(16)(x.reshape(x.shape[0], -1)))
        x = nn.Dropout(0.5, deterministic=not train)(x)
        return nn.Dense(10)(x)


class _BatchNormNet(nn.Module):
    """A tiny conv net with BatchNorm, built from jaxnets' layers (VGG's BN path, one layer deep)."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train=False):
        x = layers.Conv(4, (3, 3), padding=1, dtype=self.dtype)(x.astype(self.dtype))
        x = nn.relu(layers.BatchNorm(use_running_average=not train, dtype=self.dtype)(x))
        x = layers.Dense(10, dtype=self.dtype)(layers.flatten(layers.max_pool(x, 4)))
        return x.astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=0)  # one compile per dtype (Modules hash by their fields), not eager ops
def _bn_init(model: nn.Module) -> dict:
    return model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))


def _bn_state(dtype=jnp.float32, tx=None) -> TrainState:
    model = _BatchNormNet(dtype)
    variables = _bn_init(model)
    return TrainState.create(model, tx or optimizers.sgd(0.1), variables=variables)


# ---------------------------------------------------------------- steps you can see

def test_module_level_steps_bind_with_partial_and_jit_by_the_caller():
    """The flax-examples pattern. eager == jit for these same functions is asserted in test_training.py."""
    state = TrainState.create(_tiny_mlp(), optimizers.sgd(0.05, momentum=0.9), seed=0)
    step = functools.partial(train_step, loss="cross_entropy", learning_rate=0.05)
    data_ = batches((784,), 2, 16)
    jitted, jit_step = state, jax.jit(step)
    for batch in data_:
        jitted, jit_metrics = jit_step(jitted, batch)
    assert max_abs_diff(state.params, jitted.params) > 1e-4, "two steps must move the weights"
    assert float(jit_metrics["count"]) == 16 and np.isfinite(float(jit_metrics["loss_sum"]))
    assert float(jit_metrics["lr"]) == pytest.approx(0.05)
    assert int(jitted.step) == 2
    metrics = jax.jit(functools.partial(eval_step, loss="cross_entropy"))(jitted, data_[0])
    assert set(metrics) == {"loss_sum", "count", "correct", "correct_top5"}


def test_top5_is_part_of_every_classification_schema():
    """The schema does not change with the class count: with 3 classes every label is in the top 5."""
    model = models.create("mlp", num_layers=1, hidden_size=8, input_dim=4, output_dim=3)
    state = TrainState.create(model, optimizers.sgd(0.1))
    batch = batches((4,), 1, 8, num_classes=3)[0]
    metrics = eval_step(state, batch)
    assert float(metrics["correct_top5"]) == float(metrics["count"]) == 8
    predicted = np.argmax(np.asarray(state.apply_fn(state.variables, batch.image)), axis=-1)
    assert float(metrics["correct"]) == (predicted == np.asarray(batch.label)).sum()


def test_the_learning_rate_metric_lands_in_the_history_and_scan_matches_jit():
    config = TrainConfig(model="mlp", dataset="digits", epochs=2, batch_size=128, optimizer="sgd", lr=0.05,
                         schedule="cosine", warmup_epochs=0.5)
    results = {mode: fit(TrainConfig(**{**config.__dict__, "mode": mode}), **QUIET) for mode in ("jit", "scan")}
    history = results["jit"].history
    steps = len(data_setup.load_splits(config).train) // config.batch_size
    schedule = data_setup.learning_rate_schedule(config, steps)
    # Float32 rounding of the cosine is relative to the peak rate, not to the (small) rate near the end; jitted
    # and eager cosines differ by a few ulps (XLA's fused cos differs from the eager op's in jax 0.12).
    assert [h["lr"] for h in history] == pytest.approx([float(schedule(e * steps - 1)) for e in (1, 2)],
                                                       rel=1e-6, abs=1e-6 * config.lr)
    assert history[0]["lr"] != history[1]["lr"]
    assert {"val_top5", "test_top5"} <= set(history[-1])
    for jit_epoch, scan_epoch in zip(history, results["scan"].history, strict=True):
        assert scan_epoch["lr"] == jit_epoch["lr"]
        assert scan_epoch["train_loss"] == pytest.approx(jit_epoch["train_loss"], rel=1e-6)
        assert scan_epoch["train_acc"] == jit_epoch["train_acc"]
    assert max_abs_diff(results["jit"].state.params, results["scan"].state.params) < 1e-6


# ---------------------------------------------------------------- scan: one program per epoch

@pytest.mark.parametrize("name", [pytest.param("lenet", marks=pytest.mark.slow), "dropout"])  # quick: the MLP
def test_scan_gives_what_jit_gives_over_two_augmented_epochs(name):
    """Same data order, crops, flips and dropout keys.

    Not bit for bit on XLA:CPU: the step compiled inside the scan's loop body
    is fused differently from the step compiled alone, which moves the
    parameters by an ulp or so (measured 7e-9 after two LeNet SGD steps);
    everything that counts examples agrees exactly. A different crop, flip,
    order or dropout mask would move them by orders of magnitude more.
    """
    loader = _digits_loader(96, 32)  # 3 steps per epoch
    model = _DropoutNet() if name == "dropout" else models.create("lenet")
    variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1))) if name == "dropout" else None
    out = {}
    for mode in ("jit", "scan"):
        fresh = None if variables is None else jax.tree.map(jnp.array, variables)  # copies: jit donates the state
        state = TrainState.create(model, optimizers.sgd(0.05, momentum=0.9), seed=0, variables=fresh)
        steps, per_epoch = make_steps(mode=mode, learning_rate=0.05), []
        for epoch in range(2):
            state, metrics = steps.train_epoch(state, loader, epoch)
            per_epoch.append(jax.device_get(metrics))
        out[mode] = state, per_epoch
    (jit_state, jit_metrics), (scan_state, scan_metrics) = out["jit"], out["scan"]
    assert int(scan_state.step) == int(jit_state.step) == 6
    for a, b in zip(jit_metrics, scan_metrics, strict=True):
        np.testing.assert_array_equal(a["correct"], b["correct"])
        np.testing.assert_array_equal(a["count"], b["count"])
        np.testing.assert_allclose(a["loss_sum"], b["loss_sum"], rtol=1e-6)
    assert max_abs_diff(jit_state.params, scan_state.params) < 1e-6
    # The epoch sums of both modes come from the same float32 additions, in the same order.
    assert reduce_steps(scan_metrics[0])["count"] == 96


def test_scan_dropout_keys_matter():
    """The dropout comparison above could not pass by accident: another key stream moves the weights."""
    loader = _digits_loader(64, 32)
    model = _DropoutNet()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    steps = make_steps(mode="scan")
    ends = [steps.train_epoch(TrainState.create(model, optimizers.sgd(0.05), seed=seed,
                                                variables=jax.tree.map(jnp.array, variables)), loader, 0)[0].params
            for seed in (0, 1)]
    assert max_abs_diff(*ends) > 1e-4


# ---------------------------------------------------------------- gradient accumulation

@pytest.mark.parametrize("name", ["mlp", pytest.param("lenet", marks=pytest.mark.slow)])  # quick lane: the MLP
def test_accumulating_four_micro_batches_equals_the_four_times_larger_batch(name):
    model = _tiny_mlp() if name == "mlp" else models.create("lenet")
    shape = model.input_shape if name == "mlp" else (28, 28, 1)
    data_ = batches(shape, 2, 32)
    ends = {}
    for k in (1, 4):
        state = TrainState.create(model, optimizers.sgd(0.1, momentum=0.9), seed=0)
        step = jax.jit(functools.partial(train_step, accumulate=k))
        for batch in data_:
            state, metrics = step(state, batch)
        ends[k] = state, metrics
    (one, one_metrics), (four, four_metrics) = ends[1], ends[4]
    assert int(four.step) == 2  # one optimizer step per call
    assert max_abs_diff(one.params, four.params) < 1e-5
    np.testing.assert_allclose(four_metrics["loss_sum"], one_metrics["loss_sum"], rtol=1e-5)
    assert float(four_metrics["correct"]) == float(one_metrics["correct"])
    assert float(four_metrics["count"]) == 32


def test_accumulation_with_batchnorm_runs_and_normalises_per_micro_batch():
    batch = batches((8, 8, 3), 1, 8)[0]
    ends = {k: jax.jit(functools.partial(train_step, accumulate=k))(_bn_state(), batch)[0] for k in (1, 2)}
    assert int(ends[2].step) == 1
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(ends[2].variables))
    # Documented difference: statistics over 4 examples, twice, not over 8 once.
    assert max_abs_diff(ends[1].batch_stats, ends[2].batch_stats) > 1e-4


def test_accumulate_must_divide_the_batch():
    state = TrainState.create(_tiny_mlp(), optimizers.sgd(0.1))
    with pytest.raises(ValueError, match="does not split into accumulate=3"):
        train_step(state, batches((784,), 1, 8)[0], accumulate=3)
    with pytest.raises(ValueError, match="batch_size \\(64\\) must be a multiple of accumulate \\(3\\)"):
        TrainConfig(accumulate=3).check()
    with pytest.raises(ValueError, match="dtype must be one of"):
        TrainConfig(dtype="float8").check()
    with pytest.raises(ValueError, match="mode must be one of"):
        TrainConfig(mode="graph").check()


# ---------------------------------------------------------------- mixed precision

def test_bfloat16_computes_low_but_keeps_float32_weights_statistics_and_logits():
    float32 = {np.dtype("float32")}
    for state, shape in ((_bn_state(jnp.bfloat16, optimizers.adam(1e-3)), (8, 8, 3)),
                         (TrainState.create(models.create("lenet", dtype=jnp.bfloat16), optimizers.adam(1e-3)),
                          (28, 28, 1))):
        batch = batches(shape, 1, 4)[0]
        new, metrics = jax.jit(train_step)(state, batch)
        for tree in (new.params, new.batch_stats, new.opt_state):
            assert {x.dtype for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)} <= float32
        assert jax.eval_shape(new.apply_fn, new.variables, batch.image).dtype == jnp.float32
        assert metrics["loss_sum"].dtype == jnp.float32
        jaxpr = str(jax.make_jaxpr(lambda v, x: new.apply_fn(v, x))(new.variables, batch.image))  # noqa: B023
        assert "bf16" in jaxpr  # the convolutions really run in bfloat16
    assert jax.tree.leaves(new.batch_stats) == [] and jax.tree.leaves(_bn_state(jnp.bfloat16).batch_stats)


def test_dynamic_loss_scale_grows_backs_off_and_counts_skips():
    tx = precision.dynamic_loss_scale(optimizers.sgd(1.0), initial_scale=8.0, growth_interval=2)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    finite, overflow = {"w": jnp.full(3, 8.0)}, {"w": jnp.array([1.0, jnp.inf, 1.0])}
    updates, state = tx.update(finite, state, params)  # gradients of loss * 8: unscaled to 1
    np.testing.assert_allclose(updates["w"], -1.0)
    assert float(state.scale) == 8.0
    updates, state = tx.update(finite, state, params)  # second finite step in a row: the scale doubles
    assert float(state.scale) == 16.0
    updates, state = tx.update(overflow, state, params)  # overflow: no update, the scale halves
    np.testing.assert_array_equal(updates["w"], 0.0)
    assert float(state.scale) == 8.0 and int(precision.skipped_steps(state)) == 1
    assert not bool(precision.last_step_finite(state))


def test_float16_overflow_is_skipped_and_counted():
    model = _tiny_mlp(dtype=jnp.float16)
    tx = precision.dynamic_loss_scale(optimizers.sgd(0.1), initial_scale=2.0**40)
    state = TrainState.create(model, tx, seed=0)
    start = state.params
    step = jax.jit(functools.partial(train_step, learning_rate=0.1))
    skipped = []
    for batch in batches((784,), 40, 16):
        before = state.params
        state, metrics = step(state, batch)
        skipped.append(int(metrics["skipped"]))
        if skipped[-1]:
            assert max_abs_diff(before, state.params) == 0.0  # a skipped step leaves the weights alone
    assert skipped[0] == 1 and sum(skipped) == int(precision.skipped_steps(state.opt_state))
    assert 0 < sum(skipped) < 40  # the scale came down far enough to train
    assert float(state.opt_state.scale) < 2.0**40
    assert max_abs_diff(start, state.params) > 0
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state.params))


@pytest.mark.slow
def test_bfloat16_and_float16_train_lenet_on_digits_within_a_point_of_float32():
    accuracy, history = {}, {}
    for dtype in ("float32", "bfloat16", "float16"):
        config = TrainConfig(model="lenet", dataset="digits", epochs=10, batch_size=32, optimizer="adam", lr=3e-3,
                             schedule="cosine", dtype=dtype, mode="jit")
        result = fit(config, **QUIET)
        accuracy[dtype], history[dtype] = result.history[-1]["test_acc"], result.history
    assert accuracy["float32"] > 0.9, accuracy
    for dtype in ("bfloat16", "float16"):
        assert abs(accuracy[dtype] - accuracy["float32"]) <= 0.01, accuracy
    assert "skipped_steps" in history["float16"][-1] and "skipped_steps" not in history["float32"][-1]


def test_epoch_bench_times_every_mode_and_dtype():
    from jaxnets.bench import epochs as epoch_bench

    rows = epoch_bench.run(["mlp"], modes=("scan",), dtypes=("float32", "bfloat16"), batch_size=8, steps=2, epochs=2)
    assert [(r["mode"], r["dtype"]) for r in rows] == [("scan", "float32"), ("scan", "bfloat16")]
    assert all(r["steps_per_epoch"] == 2 and r["images_per_s"] > 0 for r in rows)
    assert "images/s" in epoch_bench.table(rows)
