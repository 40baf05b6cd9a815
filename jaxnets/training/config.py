"""The run's config: `TrainConfig`, its checks, its CLI metadata (`option`) and the fields a resume must keep.

    >>> from jaxnets.training import TrainConfig
    >>> TrainConfig(model="lenet", dataset="digits", epochs=3).check()

Every check raises `ConfigError` (a `ValueError`) carrying the field it is
about, so that `jaxnets-train` names the flag (`--field-name`) without
reading the message.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from jaxnets import data, models
from jaxnets.models.saving import decode_kwargs, encode_kwargs
from jaxnets.training import optimizers, precision
from jaxnets.training.steps import MODES, check_accumulate

# Fields that change what training computes: they must match to resume a run. The others may change:
# epochs (train longer), eval_batch_size, mode and accumulate (the same numbers, up to float reordering; with
# BatchNorm, accumulate changes the batches normalised together), keep, distributed and the devices (the same
# global batch: the same numbers), and source / data_dir / mirror / strict_data (where the data come from and which
# files are accepted: the training data itself is compared, by fingerprint).
RESUME_MUST_MATCH = ("model", "model_kwargs", "dataset", "split", "val_fraction", "seed", "batch_size", "augment",
                     "normalize", "loss", "label_smoothing", "optimizer", "lr", "momentum", "nesterov",
                     "weight_decay", "schedule", "warmup_epochs", "dtype", "image_size")


RESUME_FROM_BEST = "best"  # fit(resume=...): continue from best/ in a run folder whose checkpoints/ is gone


class ConfigError(ValueError):
    """A `TrainConfig` value that makes no sense. `field` names it; `message` (also `str(err)`) says why.

    Attributes:
      field: the `TrainConfig` field, e.g. 'weight_decay' (the CLI flag `--weight-decay`).
      message: e.g. "weight_decay must be >= 0 (got -5.0)".
    """

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message

    def __reduce__(self):
        return type(self), (self.field, self.message)


def option(default: Any = dataclasses.MISSING, help: str = "", *, choices: Callable[[], Any] | None = None,
           default_factory: Any = dataclasses.MISSING) -> Any:
    """A `TrainConfig` field that is also a `jaxnets-train` flag: its default, help text and choices in one place.

    Args:
      default: the field's default (what the CLI uses when the flag is absent).
      help: the flag's help; the CLI appends the default (read from here).
      choices: a zero-argument callable returning the allowed values (called when
        the parser is built, so catalog entries registered later show up).
      default_factory: as `dataclasses.field`.

    A field made with `dataclasses.field` (no help) gets no flag (e.g. `model_kwargs`). The flag parses its
    text as the field's annotation says (int, float, bool, str, or one of them `| None`); `jaxnets-train`
    refuses to build its parser for a flag field of another type.
    """
    metadata = {"help": help, "choices": choices}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _normalize_choices():
    return data.Preprocess.NORMALIZE


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run; stored with every checkpoint.

    The defaults are the default run, the same as `jaxnets-train` with no
    flags: LeNet on the embedded digits (no download), Adam 3e-3 with a cosine
    schedule, batch 64, 15 epochs. Presets (`jaxnets.training.presets`) are
    overrides of these fields. Each field made with `option` is also a CLI flag
    (`--field-name`), its help and default read from here.
    """

    model: str = option("lenet", "model name", choices=lambda: models.available())
    model_kwargs: dict = dataclasses.field(default_factory=dict)  # more models.create arguments (Python only)
    dataset: str = option("digits", "data set ('digits' is embedded: no download)", choices=lambda: data.available())
    source: str = option("auto", "where data comes from", choices=lambda: data.SOURCES)
    data_dir: str | None = option(None, "folder with the data files (or tfds data_dir)")
    strict_data: bool = option(True, "refuse MNIST/CIFAR files trimmed on purpose (missing batches, fewer examples "
                               "than the published 60,000/10,000 or 50,000/10,000); --no-strict-data accepts them "
                               "(as JAXNETS_DATA_STRICT=0 does)")
    image_size: int | None = option(None, "image folders: resize every image to SIZE x SIZE (default: every image "
                                    "must already have one size)")
    mirror: str | None = option(None, "base URL to download the published files from, <mirror>/<dataset>/<file> "
                                "(default: $JAXNETS_DATA_MIRROR, else the publishers' own)")
    split: str = option("train", "split to train on; the held-out part is cut from it", choices=lambda: data.SPLITS)
    epochs: int = option(15, "epochs to train")
    batch_size: int = option(64, "training batch size")
    eval_batch_size: int = option(256, "evaluation batch size")
    loss: str = dataclasses.field(default="cross_entropy")
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy")
    optimizer: str = option("adam", "optimizer", choices=lambda: optimizers.OPTIMIZERS)
    lr: float = option(3e-3, "peak learning rate")
    momentum: float = option(0.9, "SGD momentum")
    nesterov: bool = option(False, "Nesterov momentum (SGD)")
    weight_decay: float = option(0.0, "weight decay (torch.optim semantics: added to the gradient; AdamW decouples)")
    schedule: str = option("cosine", "learning-rate schedule, stepped per iteration",
                           choices=lambda: optimizers.SCHEDULES)
    warmup_epochs: float = option(0.0, "linear warm-up, in epochs")
    val_fraction: float = option(0.2, "held-out fraction of the split")
    augment: bool = option(False, "random crop (pad 4) + horizontal flip")
    normalize: str = option("dataset", "per-dataset mean/std ('dataset'), the texts' Normalize((0.5,), (0.5,)) "
                            "('half'), or none", choices=_normalize_choices)
    mode: str = option("jit", "jit (static graph, one program per step), eager (op by op) or scan (one program "
                       "per epoch)", choices=lambda: MODES)
    dtype: str = option("float32", "compute dtype; parameters, BatchNorm statistics and the loss stay float32 "
                        "(float16 adds dynamic loss scaling)", choices=lambda: precision.DTYPES)
    accumulate: int = option(1, "micro-batches per optimizer step (batch-size must be a multiple)")
    seed: int = option(0, "seed of the weights, the data order, the held-out cut and dropout")
    keep: int = option(3, "checkpoints to keep besides the best")
    distributed: bool = option(False, "join a multi-process run (jax.distributed.initialize): every process runs "
                               "this same command; the coordinator comes from --coordinator-address, --num-processes, "
                               "--process-id or the cluster's environment")

    def check(self) -> None:
        """Refuse values that make no sense.

        Raises:
          ConfigError: naming the field (`err.field`), e.g. "weight_decay must be >= 0 (got -5.0)".
        """
        for name in (*_RANGES, *_CHECKED_WHERE_USED):
            if not (name in _OPTIONAL and getattr(self, name) is None):
                check_field(name, getattr(self, name))
        fields = {f.name: f for f in dataclasses.fields(self)}
        for name in _CLOSED_CHOICES:  # the values the flag offers are the only ones there are
            allowed = tuple(fields[name].metadata["choices"]())
            if getattr(self, name) not in allowed:
                raise ConfigError(name, f"{name} must be one of {allowed} (got {getattr(self, name)!r})")
        if self.warmup_epochs and self.schedule != "cosine":
            raise ConfigError("warmup_epochs", f"warmup_epochs ({self.warmup_epochs:g}) applies to the cosine schedule "
                              f"only (this run uses schedule={self.schedule!r}): drop the warm-up or use "
                              "schedule='cosine'")
        if self.warmup_epochs and self.warmup_epochs >= self.epochs:
            raise ConfigError("warmup_epochs", f"warmup_epochs ({self.warmup_epochs:g}) must be shorter than the run "
                              f"(epochs={self.epochs}): the learning rate would never reach its peak or decay")
        try:
            check_accumulate(self.accumulate, self.batch_size)
        except ValueError as err:
            raise ConfigError("batch_size", str(err)) from None

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["model_kwargs"] = encode_kwargs(self.model_kwargs)
        return out

    @classmethod
    def from_json(cls, values: dict) -> TrainConfig:
        """A config saved by `to_json`, by this or an older version (fields it lacks take today's defaults;
        old checkpoints store every field they had, so their runs resume as they were)."""
        values = {k: v for k, v in values.items() if k in {f.name for f in dataclasses.fields(cls)}}
        values["model_kwargs"] = decode_kwargs(values.get("model_kwargs", {}))
        return cls(**values)



SEED_MAX = 2**63 - 1  # jax.random.key takes a signed 64-bit seed; numpy's generators a non-negative one
# field -> (low, high, low excluded, high excluded); high None: unbounded.
_RANGES: dict[str, tuple[float, float | None, bool, bool]] = {
    "epochs": (1, None, False, False), "batch_size": (1, None, False, False),
    "eval_batch_size": (1, None, False, False), "keep": (1, None, False, False),
    "lr": (0.0, None, True, False), "momentum": (0.0, 1.0, False, True), "weight_decay": (0.0, None, False, False),
    "warmup_epochs": (0.0, None, False, False), "label_smoothing": (0.0, 1.0, False, True),
    "val_fraction": (0.0, 1.0, False, True), "image_size": (1, None, False, False),
    "seed": (0, SEED_MAX, False, False),
}
_INTEGERS = {"epochs", "batch_size", "eval_batch_size", "keep", "image_size", "seed"}
# Fields whose `option(choices=...)` lists every valid value (a model or data set name may be registered later).
_CLOSED_CHOICES = ("source", "split", "optimizer", "schedule", "normalize", "mode", "dtype")
# field -> the check of the code that uses the value (one statement of the rule, here and there).
_CHECKED_WHERE_USED: dict[str, Callable[[Any], None]] = {"accumulate": check_accumulate}
_OPTIONAL = {"image_size"}  # None means "not set"; a set value must be in range


def check_field(name: str, value: Any) -> None:
    """Refuse a value of numeric field `name` outside its range (no-op for other fields).

    Raises:
      ConfigError: "NAME must be ... (got VALUE)", with `field` NAME.
    """
    if name in _CHECKED_WHERE_USED:
        try:
            _CHECKED_WHERE_USED[name](value)
        except ValueError as err:
            raise ConfigError(name, str(err)) from None
        return
    if name not in _RANGES:
        return
    low, high, low_open, high_open = _RANGES[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(name, f"{name} must be a number (got {value!r})")
    if not math.isfinite(value):
        raise ConfigError(name, f"{name} must be finite (got {value})")
    if name in _INTEGERS and not isinstance(value, int):
        raise ConfigError(name, f"{name} must be a whole number (got {value})")
    if (value <= low if low_open else value < low) or (high is not None and (value >= high if high_open
                                                                            else value > high)):
        raise ConfigError(name, f"{name} must be {_describe_range(low, high, low_open, high_open)} (got {value})")


def _describe_range(low, high, low_open, high_open) -> str:
    def show(x):
        return str(x) if isinstance(x, int) else f"{x:g}"

    if high is None:
        return f"> {show(low)}" if low_open else f">= {show(low)}"
    return f"in {'(' if low_open else '['}{show(low)}, {show(high)}{')' if high_open else ']'}"
