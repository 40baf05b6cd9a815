"""`fit`: the texts' training loop — epochs, held-out accuracy, save, resume.

    >>> from jaxnets.training import TrainConfig, fit
    >>> result = fit(TrainConfig(model="lenet", dataset="digits", epochs=3), workdir="runs/demo")
    >>> result.history[-1]["val_acc"]
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxnets import data, models
from jaxnets.contract import InputContract
from jaxnets.paths import expand_path
# Module-level names on purpose: the kill -9 tests replace fit's `_write_json` / `plot_history` to die mid-write.
from jaxnets.report import json_safe as _json_safe
from jaxnets.report import plot_history
from jaxnets.report import write_json as _write_json
from jaxnets.training import distributed, optimizers, precision
from jaxnets.training.checkpoint import (CheckpointError, Checkpoints, RunLock, WorkdirNotWritable, decode_kwargs,
                                         WRITE_PROBE_PREFIX, encode_kwargs, probe_writable)
from jaxnets.training.state import TrainState
from jaxnets.training.tensorboard import TensorBoard
from jaxnets.training.steps import MODES, Steps, evaluate, make_steps, merge, reduce_steps, summarize

# Fields that change what training computes: they must match to resume a run. The others may change:
# epochs (train longer), eval_batch_size, mode and accumulate (the same numbers, up to float reordering; with
# BatchNorm, accumulate changes the batches normalised together), keep, distributed and the devices (the same
# global batch: the same numbers), and source / data_dir (the training data itself is compared, by fingerprint).
RESUME_MUST_MATCH = ("model", "model_kwargs", "dataset", "split", "val_fraction", "seed", "batch_size", "augment",
                     "normalize", "loss", "label_smoothing", "optimizer", "lr", "momentum", "nesterov",
                     "weight_decay", "schedule", "warmup_epochs", "dtype", "image_size")


RESUME_FROM_BEST = "best"  # fit(resume=...): continue from best/ in a run folder whose checkpoints/ is gone


class NonFiniteLoss(FloatingPointError):
    """The training loss, the held-out loss or the weights became NaN or infinite."""


def option(default: Any = dataclasses.MISSING, help: str = "", *, choices: Callable[[], Any] | None = None,
           default_factory: Any = dataclasses.MISSING) -> Any:
    """A `TrainConfig` field that is also a `jaxnets-train` flag: its default, help text and choices in one place.

    Args:
      default: the field's default (what the CLI uses when the flag is absent).
      help: the flag's help; the CLI appends the default (read from here).
      choices: a zero-argument callable returning the allowed values (called when
        the parser is built, so catalog entries registered later show up).
      default_factory: as `dataclasses.field`.

    A field made with `dataclasses.field` (no help) gets no flag (e.g. `model_kwargs`).
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
          ValueError: naming the field, e.g. "weight_decay must be >= 0 (got -5.0)".
        """
        for name in _RANGES:
            if not (name in _OPTIONAL and getattr(self, name) is None):
                check_field(name, getattr(self, name))
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES} (got {self.mode!r})")
        if self.dtype not in precision.DTYPES:
            raise ValueError(f"dtype must be one of {precision.DTYPES} (got {self.dtype!r})")
        if self.warmup_epochs and self.schedule != "cosine":
            raise ValueError(f"warmup_epochs ({self.warmup_epochs:g}) applies to the cosine schedule only (this run "
                             f"uses schedule={self.schedule!r}): drop the warm-up or use schedule='cosine'")
        if self.warmup_epochs and self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs:g}) must be shorter than the run (epochs="
                             f"{self.epochs}): the learning rate would never reach its peak or decay")
        if self.batch_size % self.accumulate:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of accumulate ({self.accumulate}): "
                             "each optimizer step splits its batch into accumulate equal micro-batches")

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["model_kwargs"] = encode_kwargs(self.model_kwargs)
        return out

    @classmethod
    def from_json(cls, values: dict) -> "TrainConfig":
        """A config saved by `to_json`, by this or an older version (fields it lacks take today's defaults;
        old checkpoints store every field they had, so their runs resume as they were)."""
        values = {k: v for k, v in values.items() if k in {f.name for f in dataclasses.fields(cls)}}
        values["model_kwargs"] = decode_kwargs(values.get("model_kwargs", {}))
        return cls(**values)


SEED_MAX = 2**63 - 1  # jax.random.key takes a signed 64-bit seed; numpy's generators a non-negative one
# field -> (low, high, low excluded, high excluded); high None: unbounded.
_RANGES: dict[str, tuple[float, float | None, bool, bool]] = {
    "epochs": (1, None, False, False), "batch_size": (1, None, False, False),
    "eval_batch_size": (1, None, False, False), "keep": (1, None, False, False), "accumulate": (1, None, False, False),
    "lr": (0.0, None, True, False), "momentum": (0.0, 1.0, False, True), "weight_decay": (0.0, None, False, False),
    "warmup_epochs": (0.0, None, False, False), "label_smoothing": (0.0, 1.0, False, True),
    "val_fraction": (0.0, 1.0, False, True), "image_size": (1, None, False, False),
    "seed": (0, SEED_MAX, False, False),
}
_INTEGERS = {"epochs", "batch_size", "eval_batch_size", "keep", "accumulate", "image_size", "seed"}
_OPTIONAL = {"image_size"}  # None means "not set"; a set value must be in range


def check_field(name: str, value: Any) -> None:
    """Refuse a value of numeric field `name` outside its range (no-op for other fields).

    Raises:
      ValueError: "NAME must be ... (got VALUE)".
    """
    if name not in _RANGES:
        return
    low, high, low_open, high_open = _RANGES[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number (got {value!r})")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite (got {value})")
    if name in _INTEGERS and not isinstance(value, int):
        raise ValueError(f"{name} must be a whole number (got {value})")
    if (value <= low if low_open else value < low) or (high is not None and (value >= high if high_open
                                                                            else value > high)):
        raise ValueError(f"{name} must be {_describe_range(low, high, low_open, high_open)} (got {value})")


def _describe_range(low, high, low_open, high_open) -> str:
    def show(x):
        return str(x) if isinstance(x, int) else f"{x:g}"

    if high is None:
        return f"> {show(low)}" if low_open else f">= {show(low)}"
    return f"in {'(' if low_open else '['}{show(low)}, {show(high)}{')' if high_open else ']'}"


class Splits(NamedTuple):
    """The data a run uses: the training split, the held-out part cut off it (or None), the test split (or None)."""

    train: data.Dataset
    val: data.Dataset | None
    test: data.Dataset | None


class FitResult(NamedTuple):
    """What `fit` returns: the final `state`, the per-epoch `history` rows, the flax `model`, its `steps` and `config`."""

    state: TrainState
    history: list[dict]
    model: Any
    steps: Steps
    config: TrainConfig | None = None  # the resolved config the run trained with (what its checkpoints store)
    contract: InputContract | None = None  # its inputs: image shape, the normalisation used, class names


def load_splits(config: TrainConfig, log: Callable[[str], None] = print) -> Splits:
    """Load the training split, cut the held-out part off it, and the test split if it exists.

    The test split is used only for reporting, never for model selection.
    """
    full = data.load(config.dataset, config.split, source=config.source, data_dir=config.data_dir,
                     mirror=config.mirror, image_size=config.image_size)
    if config.val_fraction > 0:
        train, val = data.train_val_split(full, config.val_fraction, seed=config.seed)
    else:
        train, val = full, None
    test = None
    if config.split != "test":
        try:
            test = data.load(config.dataset, "test", source=config.source, data_dir=config.data_dir,
                             mirror=config.mirror, image_size=config.image_size)
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


def build(config: TrainConfig, train: data.Dataset, steps_per_epoch: int):
    """The model, optimizer and fresh TrainState of a resolved run (all seeded by `config.seed`)."""
    if "dtype" in config.model_kwargs:
        raise ValueError("set the compute dtype with TrainConfig.dtype (--dtype), not model_kwargs['dtype']")
    model = models.create(config.model, dtype=precision.compute_dtype(config.dtype), **config.model_kwargs)
    tx = optimizers.create(config.optimizer, learning_rate_schedule(config, steps_per_epoch),
                           momentum=config.momentum, nesterov=config.nesterov, weight_decay=config.weight_decay)
    if precision.needs_loss_scaling(config.dtype):
        tx = precision.dynamic_loss_scale(tx)
    return model, TrainState.create(model, tx, seed=config.seed)


def learning_rate_schedule(config: TrainConfig, steps_per_epoch: int):
    """The run's learning rate as a function of the optimizer step (optax schedule)."""
    total = max(1, config.epochs * steps_per_epoch)
    return optimizers.make_schedule(config.schedule, config.lr, total,
                                    warmup_steps=int(config.warmup_epochs * steps_per_epoch))




def _format_epoch(h: dict, epochs: int) -> str:
    parts = [f"epoch {h['epoch']:>3}/{epochs}", f"train loss {h['train_loss']:.4f}"]
    if h.get("train_acc") is not None:
        parts.append(f"acc {h['train_acc']:.2%}")
    if h.get("val_loss") is not None:
        parts.append(f"| held-out loss {h['val_loss']:.4f}" + (f" acc {h['val_acc']:.2%}" if h.get("val_acc") is not None else ""))
    if h.get("test_acc") is not None:
        parts.append(f"| test acc {h['test_acc']:.2%}")
    if h.get("lr") is not None:
        parts.append(f"| lr {h['lr']:.3g}")
    parts.append(f"| {h['images_per_second']:,.0f} img/s, {h['seconds']:.1f}s")
    return "  ".join(parts)


def _kept_note(checkpoints: Checkpoints | None) -> str:
    if checkpoints is None or checkpoints.latest_epoch() is None:
        return ""
    return f" The last good checkpoint (epoch {checkpoints.latest_epoch()}) in {checkpoints.workdir} is intact."


def _check_finite(loss: float, epoch: int, step: int, checkpoints: Checkpoints | None) -> None:
    if math.isfinite(loss):
        return
    raise NonFiniteLoss(f"training loss became {loss} at epoch {epoch}, step {step}: the run diverged. "
                        f"Lower the learning rate (--lr) or check the data.{_kept_note(checkpoints)}")


def count_nonfinite(tree: Any) -> tuple[int, int]:
    """`(non-finite values, all values)` over the floating-point leaves of `tree` (counted on the host)."""
    leaves = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]
    leaves = [x for x in leaves if np.issubdtype(x.dtype, np.inexact)]
    return sum(int(np.size(x) - np.count_nonzero(np.isfinite(x))) for x in leaves), sum(int(x.size) for x in leaves)


def _check_savable(arrays: dict, record: dict, checkpoints: Checkpoints | None) -> None:
    """Nothing non-finite is saved as good: the epoch's losses and every weight and optimizer value must be finite.

    Raises:
      NonFiniteLoss: naming what diverged; the previous checkpoint is untouched.
    """
    epoch = record["epoch"]
    for key, what in (("train_loss", "training loss"), ("val_loss", "held-out loss")):
        value = record.get(key)
        if value is not None and not math.isfinite(value):
            raise NonFiniteLoss(f"{what} became {value} at epoch {epoch}: the run diverged, epoch {epoch} is not "
                                f"saved. Lower the learning rate (--lr) or check the data.{_kept_note(checkpoints)}")
    bad, total = count_nonfinite(arrays)
    if bad:
        raise NonFiniteLoss(f"{bad:,} of {total:,} weights and optimizer values became NaN or infinite at epoch "
                            f"{epoch}: the run diverged, epoch {epoch} is not saved. Lower the learning rate (--lr)."
                            f"{_kept_note(checkpoints)}")


def data_fingerprint(dataset: data.Dataset) -> str:
    """A short hash of a split's images and labels (what a resumed run must train on again)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{dataset.images.shape}|{dataset.labels.shape}|".encode())
    digest.update(np.ascontiguousarray(dataset.images).tobytes())
    digest.update(np.ascontiguousarray(dataset.labels).astype(np.int32).tobytes())
    return digest.hexdigest()


def _write_run_files(workdir: Path, history: list[dict], config: TrainConfig, checkpoints: Checkpoints) -> None:
    """`history.json` and `curves.png` from `history` (each written atomically)."""
    try:
        _write_json(workdir / "history.json", history)
        plot_history(history, workdir / "curves.png", f"{config.model} on {config.dataset} ({config.mode})")
    except OSError as err:
        space = " (the disk is full)" if err.errno == errno.ENOSPC else ""
        raise WorkdirNotWritable(f"cannot write {workdir / 'history.json'} / curves.png{space}: {err}. Epochs "
                                 f"{checkpoints.epochs()} are saved; free space, then --resume rewrites them.") from err


def _best_epoch(history: list[dict]) -> int | None:
    """The first epoch with the highest held-out accuracy (how `fit` picks `best/`)."""
    best, best_val = None, -math.inf
    for h in history:
        if h.get("val_acc") is not None and h["val_acc"] > best_val:
            best, best_val = h["epoch"], h["val_acc"]
    return best


def fit(
    config: TrainConfig,
    *,
    workdir: str | Path | None = None,
    resume: bool | str = False,
    splits: Splits | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
    tensorboard: bool = True,
    mesh: jax.sharding.Mesh | None = None,
) -> FitResult:
    """Train `config.model` on `config.dataset`; evaluate held-out (and test) accuracy every epoch.

    With a `workdir`, the run owns that folder (a lock; a second run into it is
    refused), checks it is writable before loading any data, and saves after
    every epoch: `checkpoints/<epoch>` (checksummed), `best/<epoch>`,
    `history.json`, `curves.png`. A resumed run first repairs what a killed
    one left (partial saves, `history.json`, `curves.png`, `best/`).

    Data parallel by default: every batch is split over all devices of `mesh`
    (default: every device JAX sees) and the state is replicated; jit's global
    semantics make N devices compute what one device computes for the same
    global batch (BatchNorm statistics included). With `config.distributed`
    the run first joins its other processes (`distributed.initialize`); each
    reads only its rows of every batch, only process 0 logs and writes
    `history.json`, `curves.png` and TensorBoard, and all write the orbax
    checkpoints together.

    Args:
      config: the run.
      workdir: where checkpoints, `history.json` and `curves.png` go (None:
        keep nothing on disk).
      resume: continue from the latest checkpoint in `workdir` — weights,
        optimizer state, RNG, step and data order — so that an interrupted
        run ends where an uninterrupted one would. 'best': for a folder whose
        `checkpoints/` is gone, continue from the epoch saved in `best/` (a
        whole TrainState: exactly as from that epoch's checkpoint); a
        history.json recording later epochs is kept as
        `history.until-epoch-K.json`. With `checkpoints/` empty but `best/` or
        `history.json` left, `resume=True` refuses rather than start over.
      splits: pre-loaded data (default: `load_splits(config)`).
      progress: show a tqdm bar (None: only on a terminal).
      log: where the per-epoch lines go.
      tensorboard: also write TensorBoard scalars and the config under
        `workdir/tensorboard` (see `jaxnets.training.tensorboard`).
      mesh: the devices to train on (`distributed.data_parallel_mesh(devices)`;
        default: all of them). One device trains exactly as before.

    Returns:
      FitResult(state, history, model, steps, config): `config` is the resolved
      one (`resolve`: model arguments from the data), as stored; history holds one dict per
      epoch (epoch, train_loss, train_acc, val_loss, val_acc, test_acc, lr
      (the train step's `lr` metric: the learning rate of the epoch's last
      step), seconds, images_per_second; for classification also val_top5 and
      test_top5 when those splits exist; with dtype='float16' also
      skipped_steps (steps whose gradients overflowed, update skipped) and
      loss_scale (the dynamic loss scale at the epoch's end)).

    Raises:
      ValueError: a config value that makes no sense (named), resume without a workdir, or a batch size
        that does not divide over the devices (the message names the nearest valid sizes).
      FileExistsError: `workdir` already has checkpoints, best/ or history.json and `resume` is False.
      RunLocked: another live run owns `workdir` (named by pid and host).
      WorkdirNotWritable: `workdir` is read-only, blocked by a file, or the disk is full.
      CheckpointError: resuming from a corrupt or mismatched checkpoint, or with
        a config field that changes the training computation (named); resuming
        a folder whose checkpoints/ is gone but whose best/ or history.json is
        left (named, with how to keep them or to continue from best/).
      NonFiniteLoss: the training or held-out loss or the weights became NaN/inf
        (that epoch is not saved; the last good checkpoint stays).
    """
    config.check()
    if resume not in (False, True, RESUME_FROM_BEST):
        raise ValueError(f"resume must be True, False or {RESUME_FROM_BEST!r} (got {resume!r})")
    workdir = None if workdir is None else expand_path(workdir)
    if config.distributed:
        distributed.initialize()  # no-op when the CLI already did it with its flags
    mesh = distributed.data_parallel_mesh() if mesh is None else mesh
    distributed.check_batch_size(config.batch_size, mesh, "batch size")
    if not distributed.is_main_process():  # one voice: process 0 prints, shows progress and writes the logs
        log, progress, tensorboard = _silent, False, False
    if workdir is None:
        if resume:
            raise ValueError("resume=True needs a workdir")
        return _fit(config, None, None, False, splits, progress, log, False, mesh)
    # The lock guards against a second *run*; the processes of one run share the folder (process 0 holds it).
    lock = RunLock(workdir).acquire() if distributed.is_main_process() else None
    try:
        return _fit(config, workdir, lock, resume, splits, progress, log, tensorboard, mesh)
    finally:
        if lock is not None:
            lock.release()


def _silent(_: str) -> None:
    """The log of processes other than 0."""


def _open_workdir(workdir: Path, lock: RunLock, resume: bool, keep: int, log) -> Checkpoints:
    """Under the lock: refuse to overwrite, check writability, remove partial saves.

    In a multi-process run every process opens the (shared) folder; only process 0, the lock holder, deletes.
    """
    held = lock.previous_holder if lock is not None else None
    if held:
        log(f"note: took over {workdir} from pid {held.get('pid')} on {held.get('host')}, whose run ended without "
            "releasing it")
    existing = [p for sub in ("checkpoints", "best") if (workdir / sub).is_dir() for p in (workdir / sub).iterdir()
                if not p.name.startswith(WRITE_PROBE_PREFIX)]  # the other processes of this run may be probing now
    if (existing or (workdir / "history.json").exists()) and not resume:
        raise FileExistsError(f"{workdir} already holds a run (checkpoints, best/ or history.json); pass resume=True "
                              "(--resume) to continue that run, or choose another workdir")
    for sub in ("checkpoints", "best"):
        probe_writable(workdir / sub)
    checkpoints = Checkpoints(workdir, keep=keep)
    if lock is not None:
        for path in checkpoints.remove_partial_saves():
            log(f"note: removed {path}, left by a save that did not finish")
    distributed.sync("jaxnets-fit-open-workdir")  # the others read the folder only once process 0 has cleaned it
    return checkpoints


def _fit(config: TrainConfig, workdir: Path | None, lock: RunLock | None, resume: bool, splits: Splits | None,
         progress, log, tensorboard: bool, mesh: jax.sharding.Mesh) -> FitResult:
    checkpoints = None if workdir is None else _open_workdir(workdir, lock, resume, config.keep, log)
    board = None
    try:
        source = _resume_source(workdir, checkpoints, resume)
        if source is not None:
            # Refuse a changed config before spending time on data; model_kwargs can be completed only with data.
            _check_resume_config(checkpoints.read_meta(best=source == "best"), config,
                                 [f for f in RESUME_MUST_MATCH if f != "model_kwargs"])
        splits = splits or load_splits(config, log)
        config = resolve(config, splits.train)  # from here on, the run's config: catalogs resolved once
        preprocess = data.Preprocess.for_dataset(config.dataset, splits.train.images, config.normalize, config.augment)
        contract = InputContract(splits.train.image_shape, preprocess.mean, preprocess.std, splits.train.class_names,
                                 config.dataset, config.normalize)
        parallel = distributed.is_parallel(mesh)  # one device: placement exactly as without a mesh
        sharding = distributed.batch_sharding(mesh) if parallel else None
        # Evaluation batches are padded and masked, so rounding their size up to a multiple of the devices
        # changes no number.
        eval_batch_size = distributed.padded_batch_size(config.eval_batch_size, mesh) if parallel \
            else config.eval_batch_size
        train_loader = data.Loader(splits.train.images, splits.train.labels, config.batch_size, preprocess=preprocess,
                                   train=True, seed=config.seed, sharding=sharding)
        eval_loader = {
            name: data.Loader(ds.images, ds.labels, eval_batch_size, preprocess=preprocess, train=False,
                              sharding=sharding)
            for name, ds in (("val", splits.val), ("test", splits.test)) if ds is not None and len(ds)
        }
        model, state = build(config, splits.train, len(train_loader))
        if parallel:
            state = distributed.replicate(state, mesh)
            log(f"data parallel: batch {config.batch_size} split over {distributed.describe(mesh)}")
        steps = make_steps(config.loss, config.mode, config.label_smoothing, accumulate=config.accumulate,
                           learning_rate=learning_rate_schedule(config, len(train_loader)))
        fingerprint = data_fingerprint(splits.train) if checkpoints is not None else None

        history, start_epoch, best_val, best_epoch = [], 0, -math.inf, None
        if source == "best":
            epoch = checkpoints.checkpoint_from_best(state.arrays())
            log(f"note: copied best/{epoch} to checkpoints/{epoch}: the run continues from epoch {epoch}")
            if distributed.is_main_process():
                _keep_later_history(workdir, epoch, log)
        if source is not None:
            state, history = _resume(checkpoints, config, state, fingerprint, log)
            start_epoch = history[-1]["epoch"] if history else checkpoints.latest_epoch()
            best_epoch = _best_epoch(history)
            best_val = next((h["val_acc"] for h in history if h["epoch"] == best_epoch), -math.inf)
            if distributed.is_main_process():
                _write_run_files(workdir, history, config, checkpoints)
        elif resume:
            log(f"note: nothing to resume in {workdir}; starting a new run")
        if tensorboard and workdir is not None:  # rebuilt from the history: one point per epoch, whatever was killed
            board = TensorBoard(workdir / "tensorboard", config.to_json(), history=history)

        for epoch in range(start_epoch, config.epochs):
            state, record = _run_epoch(state, steps, train_loader, eval_loader, epoch, config, checkpoints, progress)
            arrays = jax.device_get(state.arrays())  # checked and saved from one host copy
            _check_savable(arrays, record, checkpoints)
            history.append(record)
            is_best = record.get("val_acc") is not None and record["val_acc"] > best_val
            if is_best:
                best_val, best_epoch = record["val_acc"], epoch + 1
            if checkpoints is not None:
                meta = {"config": config.to_json(), "history": _json_safe(history), "data_fingerprint": fingerprint,
                        "best_epoch": best_epoch, "best_val_acc": best_val if math.isfinite(best_val) else None,
                        "input_contract": contract.to_json()}
                checkpoints.save(epoch + 1, arrays, meta, is_best)  # collective: every process calls it
                if distributed.is_main_process():
                    _write_run_files(workdir, history, config, checkpoints)
            if board is not None:
                board.write_epoch(record)
            log(_format_epoch(record, config.epochs))
    finally:
        if board is not None:
            board.close()
        if checkpoints is not None:
            checkpoints.close()
    return FitResult(state, history, model, steps, config, contract)


def _resume_source(workdir: Path | None, checkpoints: Checkpoints | None, resume: bool | str) -> str | None:
    """Where a resumed run continues from: 'checkpoints', 'best' (`resume='best'`) or None (a new run).

    A run folder whose `checkpoints/` holds nothing but whose `best/` or
    `history.json` holds an earlier run's results is never started over:
    that would overwrite the last surviving weights.

    Raises:
      CheckpointError: `resume=True` but only `best/` / `history.json` are left
        (the message names them and how to keep them, or to continue from
        `best/`); or `resume='best'` with checkpoints present or `best/` empty.
    """
    if checkpoints is None or not resume:
        return None
    latest, best = checkpoints.latest_epoch(), checkpoints.best_epoch()
    if resume == RESUME_FROM_BEST:
        if latest is not None:
            raise CheckpointError(f"{workdir / 'checkpoints'} holds epochs {checkpoints.epochs()}: continue from "
                                  f"epoch {latest} with --resume (resume=True); resuming from best/ is for a run "
                                  "folder whose checkpoints/ is gone")
        if best is None:
            raise CheckpointError(f"cannot resume from best/: {workdir / 'best'} holds no saved epoch")
        return "best"
    if latest is not None:
        return "checkpoints"
    left = _earlier_results(workdir, best)
    if not left:
        return None
    offer = (f"To continue from the weights in best/ (epoch {best}), pass --resume-from-best (resume='best'); to "
             f"start over, move them away first" if best is not None else "To start over, move them away first")
    raise CheckpointError(f"cannot resume: {workdir / 'checkpoints'} holds no checkpoint, but {workdir} holds "
                          f"{' and '.join(left)} of an earlier run, which starting over would overwrite. {offer} "
                          f"(mv {workdir} {workdir}.old) or choose another workdir (--workdir)")


def _earlier_results(workdir: Path, best: int | None) -> list[str]:
    """What an earlier run left besides checkpoints/, described: best/<N> and history.json (with its epochs)."""
    left = [f"best/{best} (the weights of epoch {best})"] if best is not None else []
    history = workdir / "history.json"
    if history.exists():
        epochs = _history_epochs(history)
        left.append(f"history.json (epochs {epochs[0]}-{epochs[-1]})" if epochs else "history.json")
    return left


def _history_epochs(path: Path) -> list[int]:
    """The epochs `history.json` at `path` records ([] when unreadable)."""
    try:
        return [int(h["epoch"]) for h in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError, KeyError):
        return []


def _keep_later_history(workdir: Path, epoch: int, log) -> None:
    """Before a run continues from `best/<epoch>`: move a history.json that records later epochs aside, kept."""
    path = workdir / "history.json"
    epochs = _history_epochs(path)
    if not epochs or max(epochs) <= epoch:
        return
    kept = workdir / f"history.until-epoch-{max(epochs)}.json"
    n = 1
    while kept.exists():
        n += 1
        kept = workdir / f"history.until-epoch-{max(epochs)}.{n}.json"
    os.replace(path, kept)
    log(f"note: history.json recorded epochs up to {max(epochs)}; kept as {kept.name}, the run continues from "
        f"epoch {epoch}")


def _resume(checkpoints: Checkpoints, config: TrainConfig, fresh: TrainState, fingerprint: str, log) -> tuple:
    """Check the config, restore and verify the latest checkpoint, and put `best/` back in line with its history."""
    meta = checkpoints.read_meta()
    saved = _check_resume_config(meta, config, RESUME_MUST_MATCH)  # before restoring: clearer than a shape mismatch
    if meta.get("data_fingerprint") not in (None, fingerprint):
        raise CheckpointError(f"cannot resume: the training data differ from the data the checkpoint was trained on "
                              f"({config.dataset} from source={config.source!r}, data_dir={config.data_dir!r} now "
                              "gives other images or labels). Point to the same data, or start a new run")
    epoch = checkpoints.latest_epoch()
    state_arrays, meta = checkpoints.restore(fresh.arrays(), epoch=epoch)
    if saved.epochs != config.epochs and config.schedule != "constant":
        warnings.warn(f"resuming a {saved.epochs}-epoch run as {config.epochs} epochs: the {config.schedule} "
                      "schedule's length changes with it", stacklevel=4)
    state = fresh.replace_arrays(jax.tree.map(jnp.asarray, state_arrays))
    history = [h for h in meta["history"] if h["epoch"] <= epoch]
    _repair_best(checkpoints, epoch, meta.get("best_epoch", _best_epoch(history)), state_arrays, meta, fresh, log)
    log(f"resumed from {checkpoints.workdir / 'checkpoints' / str(epoch)} (epoch {epoch}, step {int(state.step)})")
    return state, history


def _check_resume_config(meta: dict, config: TrainConfig, fields) -> TrainConfig:
    """The checkpoint's config; raises CheckpointError naming the first of `fields` that differs in `config`."""
    saved = TrainConfig.from_json(meta["config"])
    for field in fields:
        if getattr(saved, field) != getattr(config, field):
            raise CheckpointError(f"cannot resume: the checkpoint was trained with {field}={getattr(saved, field)!r}, "
                                  f"this run asks for {getattr(config, field)!r}. Use the same {field}, or start a "
                                  "new run in another workdir")
    return saved


def _repair_best(checkpoints: Checkpoints, epoch: int, best_epoch: int | None, arrays: dict, meta: dict,
                 fresh: TrainState, log) -> None:
    """Make `best/` hold `best_epoch`, as the history of the checkpoint resumed from says."""
    for dropped in checkpoints.drop_best_after(epoch):
        log(f"note: removed best/{dropped}: it belongs to epochs after {epoch}, which this run trains again")
    if best_epoch is None or checkpoints.best_epochs() == [best_epoch]:
        return
    if best_epoch == epoch:
        checkpoints.place_best(epoch, arrays, meta)
    elif best_epoch in checkpoints.epochs():
        checkpoints.place_best(best_epoch, *checkpoints.restore(fresh.arrays(), epoch=best_epoch))
    elif best_epoch not in checkpoints.best_epochs():
        log(f"note: best/ should hold epoch {best_epoch}, which is no longer saved anywhere")
        return
    log(f"note: best/ now holds epoch {best_epoch}, as the history of epoch {epoch} says")


def _run_epoch(state, steps: Steps, loader: data.Loader, eval_loaders: dict, epoch: int, config: TrainConfig,
               checkpoints, progress) -> tuple[TrainState, dict]:
    start = time.perf_counter()
    bar = tqdm(total=len(loader), desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", leave=False,
               disable=(None if progress is None else not progress), dynamic_ncols=True)
    with bar:
        if steps.mode == "scan":  # one compiled program for the whole epoch: the bar moves once
            state, stacked = steps.train_epoch(state, loader, epoch)
            stacked = jax.device_get(stacked)  # [S] per step: one host sync per epoch
            totals = reduce_steps(stacked)
            losses = stacked["loss_sum"] / np.maximum(stacked["count"], 1.0)
            bad = np.flatnonzero(~np.isfinite(np.asarray(losses)))
            if len(bad):
                _check_finite(float(losses[bad[0]]), epoch + 1, int(bad[0]) + 1, checkpoints)
            bar.update(len(loader))
        else:
            state, totals = _step_by_step(state, steps, loader, epoch, config, checkpoints, bar, start)
    train = summarize(totals)
    _check_finite(train["loss"], epoch + 1, len(loader), checkpoints)
    train_seconds = time.perf_counter() - start
    record = {"epoch": epoch + 1, "train_loss": train["loss"], "train_acc": train.get("accuracy"),
              "val_loss": None, "val_acc": None, "test_acc": None, "lr": train.get("lr")}
    if "skipped_steps" in train:  # float16: steps whose gradients overflowed, and the loss scale reached
        record["skipped_steps"], record["loss_scale"] = train["skipped_steps"], train["loss_scale"]
    for name, eval_loader in eval_loaders.items():
        result = evaluate(steps, state, eval_loader)
        record[f"{name}_acc"] = result.get("accuracy")
        if name == "val":
            record["val_loss"] = result["loss"]
        if "top5" in result:
            record[f"{name}_top5"] = result["top5"]
    record["seconds"] = time.perf_counter() - start
    record["images_per_second"] = len(loader) * config.batch_size / train_seconds
    return state, record


def _step_by_step(state, steps: Steps, loader: data.Loader, epoch: int, config: TrainConfig, checkpoints, bar,
                  start: float) -> tuple[TrainState, dict]:
    """The epoch one `steps.train` call at a time ('jit', 'eager'), the bar updated every step."""
    totals = None
    update_every = max(1, len(loader) // 20)
    for step, batch in enumerate(loader.epoch(epoch)):
        state, metrics = steps.train(state, batch)
        totals = merge(totals, metrics)
        bar.update(1)
        if (step + 1) % update_every == 0:  # one host sync every few steps, not every step
            running = summarize(totals)
            _check_finite(running["loss"], epoch + 1, step + 1, checkpoints)
            seen = (step + 1) * config.batch_size
            bar.set_postfix(loss=f"{running['loss']:.4f}", acc=f"{running.get('accuracy', 0):.2%}",
                            img_s=f"{seen / (time.perf_counter() - start):,.0f}")
    return state, totals
