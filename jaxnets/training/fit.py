"""`fit`: the texts' training loop — epochs, held-out accuracy, save, resume.

    >>> from jaxnets.training import TrainConfig, fit
    >>> result = fit(TrainConfig(model="lenet", dataset="digits", epochs=3), workdir="runs/demo")
    >>> result.history[-1]["val_acc"]
"""

from __future__ import annotations

import dataclasses
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
from jaxnets.training import optimizers
from jaxnets.training.checkpoint import CheckpointError, Checkpoints, decode_kwargs, encode_kwargs
from jaxnets.training.state import TrainState
from jaxnets.training.steps import Steps, evaluate, make_steps, summarize

# Fields that must match to resume a run (the rest may change, e.g. epochs).
_RESUME_MUST_MATCH = ("model", "model_kwargs", "dataset", "optimizer", "loss", "seed", "batch_size", "val_fraction")


class NonFiniteLoss(FloatingPointError):
    """The training loss became NaN or infinite."""


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run; stored with every checkpoint."""

    model: str = "lenet"
    model_kwargs: dict = dataclasses.field(default_factory=dict)
    dataset: str = "digits"
    source: str = "auto"
    data_dir: str | None = None
    split: str = "train"  # the split to train on; its held-out part comes from val_fraction
    epochs: int = 5
    batch_size: int = 64
    eval_batch_size: int = 256
    loss: str = "cross_entropy"
    label_smoothing: float = 0.0
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    val_fraction: float = 0.2
    augment: bool = False
    normalize: str = "dataset"
    mode: str = "jit"
    seed: int = 0
    keep: int = 3

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["model_kwargs"] = encode_kwargs(self.model_kwargs)
        return out

    @classmethod
    def from_json(cls, values: dict) -> "TrainConfig":
        values = {k: v for k, v in values.items() if k in {f.name for f in dataclasses.fields(cls)}}
        values["model_kwargs"] = decode_kwargs(values.get("model_kwargs", {}))
        return cls(**values)


class Splits(NamedTuple):
    train: data.Dataset
    val: data.Dataset | None
    test: data.Dataset | None


class FitResult(NamedTuple):
    state: TrainState
    history: list[dict]
    model: Any
    steps: Steps


def load_splits(config: TrainConfig, log: Callable[[str], None] = print) -> Splits:
    """Load the training split, cut the held-out part off it, and the test split if it exists.

    The test split is used only for reporting, never for model selection.
    """
    full = data.load(config.dataset, config.split, source=config.source, data_dir=config.data_dir)
    if config.val_fraction > 0:
        train, val = data.train_val_split(full, config.val_fraction, seed=config.seed)
    else:
        train, val = full, None
    test = None
    if config.split != "test":
        try:
            test = data.load(config.dataset, "test", source=config.source, data_dir=config.data_dir)
        except data.DataNotFound:
            log(f"note: no test split of {config.dataset} found; reporting held-out accuracy only")
    return Splits(train, val, test)


def _model_kwargs(config: TrainConfig, train: data.Dataset) -> dict:
    kwargs = dict(config.model_kwargs)
    builder = models.create(config.model)
    if isinstance(builder, models.MLP):
        kwargs.setdefault("input_dim", int(np.prod(train.image_shape)))
        kwargs.setdefault("output_dim", train.num_classes)
    else:
        kwargs.setdefault("num_classes", train.num_classes)
    return kwargs


def build(config: TrainConfig, train: data.Dataset, steps_per_epoch: int):
    """The model, optimizer and fresh TrainState of a run (all seeded by `config.seed`)."""
    model = models.create(config.model, **config.model_kwargs)
    want, got = tuple(model.input_shape), tuple(train.image_shape)
    if not isinstance(model, models.MLP) and (got[-1] != want[-1] or (_fixed_size(model) and got != want)):
        raise ValueError(f"{config.model} expects images of shape {want}, but {config.dataset} has {got}; "
                         "choose a model for this data set")
    total = max(1, config.epochs * steps_per_epoch)
    schedule = optimizers.make_schedule(config.schedule, config.lr, total,
                                        warmup_steps=int(config.warmup_epochs * steps_per_epoch))
    tx = optimizers.create(config.optimizer, schedule, momentum=config.momentum, nesterov=config.nesterov,
                           weight_decay=config.weight_decay)
    return model, TrainState.create(model, tx, seed=config.seed)


def _fixed_size(model) -> bool:
    return isinstance(model, models.LeNet) or (isinstance(model, models.VGG) and model.head == "cifar")


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=2))
    os.replace(tmp, path)


def plot_history(history: list[dict], path: str | Path, title: str = "") -> Path:
    """Loss and accuracy per epoch (train / held-out / test) as a PNG."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # noqa: PLC0415
    import matplotlib.ticker  # noqa: PLC0415

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("train_loss", "train"), ("val_loss", "held-out")):
        if any(h.get(key) is not None for h in history):
            ax_loss.plot(epochs, [h.get(key) for h in history], marker="o", label=label)
    for key, label in (("train_acc", "train"), ("val_acc", "held-out"), ("test_acc", "test")):
        if any(h.get(key) is not None for h in history):
            ax_acc.plot(epochs, [h.get(key) for h in history], marker="o", label=label)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def _format_epoch(h: dict, epochs: int) -> str:
    parts = [f"epoch {h['epoch']:>3}/{epochs}", f"train loss {h['train_loss']:.4f}"]
    if h.get("train_acc") is not None:
        parts.append(f"acc {h['train_acc']:.2%}")
    if h.get("val_loss") is not None:
        parts.append(f"| held-out loss {h['val_loss']:.4f}" + (f" acc {h['val_acc']:.2%}" if h.get("val_acc") is not None else ""))
    if h.get("test_acc") is not None:
        parts.append(f"| test acc {h['test_acc']:.2%}")
    parts.append(f"| {h['images_per_second']:,.0f} img/s, {h['seconds']:.1f}s")
    return "  ".join(parts)


def _check_finite(loss: float, epoch: int, step: int, checkpoints: Checkpoints | None) -> None:
    if math.isfinite(loss):
        return
    kept = ""
    if checkpoints is not None and checkpoints.latest_epoch() is not None:
        kept = f" The last good checkpoint (epoch {checkpoints.latest_epoch()}) in {checkpoints.workdir} is intact."
    raise NonFiniteLoss(f"training loss became {loss} at epoch {epoch}, step {step}: the run diverged. "
                        f"Lower the learning rate (--lr) or check the data.{kept}")


def fit(
    config: TrainConfig,
    *,
    workdir: str | Path | None = None,
    resume: bool = False,
    splits: Splits | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
) -> FitResult:
    """Train `config.model` on `config.dataset`; evaluate held-out (and test) accuracy every epoch.

    Args:
      config: the run.
      workdir: where checkpoints, `history.json` and `curves.png` go (None:
        keep nothing on disk).
      resume: continue from the latest checkpoint in `workdir` — weights,
        optimizer state, RNG, step and data order — so that an interrupted
        run ends where an uninterrupted one would.
      splits: pre-loaded data (default: `load_splits(config)`).
      progress: show a tqdm bar (None: only on a terminal).
      log: where the per-epoch lines go.

    Returns:
      FitResult(state, history, model, steps): history holds one dict per
      epoch (epoch, train_loss, train_acc, val_loss, val_acc, test_acc,
      seconds, images_per_second).

    Raises:
      FileExistsError: `workdir` already has checkpoints and `resume` is False.
      CheckpointError: resuming from a corrupt or mismatched checkpoint.
      NonFiniteLoss: the loss became NaN/inf (the last good checkpoint stays).
    """
    splits = splits or load_splits(config, log)
    config = dataclasses.replace(config, model_kwargs=_model_kwargs(config, splits.train))
    preprocess = data.Preprocess.for_dataset(config.dataset, splits.train.images, config.normalize, config.augment)
    train_loader = data.Loader(splits.train.images, splits.train.labels, config.batch_size, preprocess=preprocess,
                               train=True, seed=config.seed)
    eval_loader = {
        name: data.Loader(ds.images, ds.labels, config.eval_batch_size, preprocess=preprocess, train=False)
        for name, ds in (("val", splits.val), ("test", splits.test)) if ds is not None and len(ds)
    }
    model, state = build(config, splits.train, len(train_loader))
    steps = make_steps(config.loss, config.mode, config.label_smoothing)

    checkpoints, history, start_epoch, best_val = None, [], 0, -math.inf
    if workdir is not None:
        workdir = Path(workdir)
        existing = (workdir / "checkpoints").is_dir() and any((workdir / "checkpoints").iterdir())
        if existing and not resume:
            raise FileExistsError(f"{workdir} already holds checkpoints; pass resume=True (--resume) to continue "
                                  "that run, or choose another workdir")
        workdir.mkdir(parents=True, exist_ok=True)
        checkpoints = Checkpoints(workdir, keep=config.keep)
        if resume and checkpoints.latest_epoch() is not None:
            state, start_epoch, history, best_val = _resume(checkpoints, config, state, log)
        elif resume:
            log(f"note: nothing to resume in {workdir}; starting a new run")
    elif resume:
        raise ValueError("resume=True needs a workdir")

    try:
        for epoch in range(start_epoch, config.epochs):
            state, record = _run_epoch(state, steps, train_loader, eval_loader, epoch, config, checkpoints, progress)
            history.append(record)
            is_best = record.get("val_acc") is not None and record["val_acc"] > best_val
            best_val = max(best_val, record.get("val_acc") or -math.inf)
            if checkpoints is not None:
                checkpoints.save(epoch + 1, state.arrays(),
                                 {"config": config.to_json(), "history": history, "best_val_acc": best_val}, is_best)
                _write_json(workdir / "history.json", history)
                plot_history(history, workdir / "curves.png", f"{config.model} on {config.dataset} ({config.mode})")
            log(_format_epoch(record, config.epochs))
    finally:
        if checkpoints is not None:
            checkpoints.close()
    return FitResult(state, history, model, steps)


def _resume(checkpoints: Checkpoints, config: TrainConfig, fresh: TrainState, log) -> tuple:
    saved = TrainConfig.from_json(checkpoints.read_meta()["config"])
    for field in _RESUME_MUST_MATCH:  # checked first: a clearer message than a shape mismatch
        if getattr(saved, field) != getattr(config, field):
            raise CheckpointError(f"cannot resume: the checkpoint was trained with {field}={getattr(saved, field)!r}, "
                                  f"this run asks for {getattr(config, field)!r}")
    state_arrays, meta = checkpoints.restore(fresh.arrays())
    if saved.epochs != config.epochs and config.schedule != "constant":
        warnings.warn(f"resuming a {saved.epochs}-epoch run as {config.epochs} epochs: the {config.schedule} "
                      "schedule's length changes with it", stacklevel=3)
    state = fresh.replace_arrays(jax.tree.map(jnp.asarray, state_arrays))
    epoch = checkpoints.latest_epoch()
    log(f"resumed from {checkpoints.workdir / 'checkpoints' / str(epoch)} (epoch {epoch}, step {int(state.step)})")
    return state, epoch, list(meta["history"]), float(meta.get("best_val_acc", -math.inf))


def _run_epoch(state, steps: Steps, loader: data.Loader, eval_loaders: dict, epoch: int, config: TrainConfig,
               checkpoints, progress) -> tuple[TrainState, dict]:
    start = time.perf_counter()
    totals = None
    update_every = max(1, len(loader) // 20)
    bar = tqdm(total=len(loader), desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", leave=False,
               disable=(None if progress is None else not progress), dynamic_ncols=True)
    with bar:
        for step, batch in enumerate(loader.epoch(epoch)):
            state, metrics = steps.train(state, batch)
            totals = metrics if totals is None else jax.tree.map(jnp.add, totals, metrics)
            bar.update(1)
            if (step + 1) % update_every == 0:  # one host sync every few steps, not every step
                running = summarize(totals)
                _check_finite(running["loss"], epoch + 1, step + 1, checkpoints)
                seen = (step + 1) * config.batch_size
                bar.set_postfix(loss=f"{running['loss']:.4f}", acc=f"{running.get('accuracy', 0):.2%}",
                                img_s=f"{seen / (time.perf_counter() - start):,.0f}")
    train = summarize(totals)
    _check_finite(train["loss"], epoch + 1, len(loader), checkpoints)
    train_seconds = time.perf_counter() - start
    record = {"epoch": epoch + 1, "train_loss": train["loss"], "train_acc": train.get("accuracy"),
              "val_loss": None, "val_acc": None, "test_acc": None}
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
