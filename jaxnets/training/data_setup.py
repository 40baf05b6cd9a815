"""From the config to what a run trains: its data splits, the config resolved from the data, the model and state.

    >>> splits = load_splits(config)
    >>> config = resolve(config, splits.train)
    >>> model, state = build(config, learning_rate_schedule(config, steps_per_epoch))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import optax

from jaxnets import data, models
from jaxnets.training import optimizers, precision
from jaxnets.training.config import TrainConfig
from jaxnets.training.state import TrainState


class Splits(NamedTuple):
    """The data a run uses: the training split, the held-out part cut off it (or None), the test split (or None)."""

    train: data.Dataset
    val: data.Dataset | None
    test: data.Dataset | None




def load_splits(config: TrainConfig, log: Callable[[str], None] = print, *, cache: bool = True) -> Splits:
    """Load the training split, cut the held-out part off it, and the test split if it exists.

    The test split is used only for reporting, never for model selection.

    Args:
      config: the run (`dataset`, `split`, `source`, `data_dir`, `mirror`,
        `image_size`, `val_fraction`, `seed`; `strict_data=False` accepts
        trimmed standard files, True leaves it to `data.load`'s default:
        strict unless `$JAXNETS_DATA_STRICT=0`).
      log: where the note about a missing test split goes.
      cache: use the decoded-data caches (False: neither read nor write
        them; True: `data.load`'s default, on unless `$JAXNETS_DATA_CACHE=0`).

    Raises:
      data.DataError: the data cannot be found or read (named).
    """
    def load(split: str) -> data.Dataset:
        return data.load(config.dataset, split, source=config.source, data_dir=config.data_dir, mirror=config.mirror,
                         image_size=config.image_size, strict=None if config.strict_data else False,
                         cache=None if cache else False)

    full = load(config.split)
    if config.val_fraction > 0:
        train, val = data.train_val_split(full, config.val_fraction, seed=config.seed)
    else:
        train, val = full, None
    test = None
    if config.split != "test":
        try:
            test = load("test")
        except data.DataNotFound:
            log(f"note: no test split of {config.dataset} found; reporting held-out accuracy only")
    return Splits(train, val, test)


def resolve(config: TrainConfig, train: data.Dataset) -> TrainConfig:
    """The run's config with what the catalogs decide from the data filled in, checked against the model's input.

    The model catalog says which `models.create` arguments follow from a data
    set (the class count; the MLP's input and output size); explicit
    `config.model_kwargs` win (aliases such as the MLP's `num_classes` count
    as the field they stand for). The caller's config is not changed: the new
    one is what `fit` trains with, returns (`FitResult.config`) and stores
    with every checkpoint.

    Raises:
      ValueError: unknown model or argument, or the data's images do not fit
        the model's input contract (named, with both shapes).
    """
    entry = models.catalog.get(config.model)
    kwargs = {**entry.arguments(train.image_shape, train.num_classes), **entry.canonical_kwargs(config.model_kwargs)}
    mismatch = entry.data_mismatch(entry.create(**kwargs), train.image_shape)
    if mismatch:
        raise ValueError(f"{mismatch}, but {config.dataset} has {tuple(train.image_shape)}; "
                         "choose a model for this data set")
    return dataclasses.replace(config, model_kwargs=kwargs)


def build(config: TrainConfig, learning_rate: float | optax.Schedule):
    """The model, optimizer and fresh TrainState of a resolved run (all seeded by `config.seed`).

    Args:
      config: the resolved run (`resolve`).
      learning_rate: the optimizer's learning rate: `learning_rate_schedule(config, steps_per_epoch)`, the
        schedule the run's train step also reports (a schedule's optimizer state differs from a constant's).

    Raises:
      ValueError: `model_kwargs` sets the dtype, or the model / optimizer is unknown.
    """
    if "dtype" in config.model_kwargs:
        raise ValueError("set the compute dtype with TrainConfig.dtype (--dtype), not model_kwargs['dtype']")
    model = models.create(config.model, dtype=precision.compute_dtype(config.dtype), **config.model_kwargs)
    tx = optimizers.create(config.optimizer, learning_rate, momentum=config.momentum, nesterov=config.nesterov,
                           weight_decay=config.weight_decay)
    if precision.needs_loss_scaling(config.dtype):
        tx = precision.dynamic_loss_scale(tx)
    return model, TrainState.create(model, tx, seed=config.seed)


def learning_rate_schedule(config: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
    """The run's learning rate as a function of the optimizer step (optax schedule)."""
    total = max(1, config.epochs * steps_per_epoch)
    return optimizers.make_schedule(config.schedule, config.lr, total,
                                    warmup_steps=int(config.warmup_epochs * steps_per_epoch))
