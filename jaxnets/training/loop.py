"""`fit`: the texts' training loop — epochs, held-out accuracy, save, resume.

    >>> from jaxnets.training import TrainConfig, fit
    >>> result = fit(TrainConfig(model="lenet", dataset="digits", epochs=3), workdir="runs/demo")
    >>> result.history[-1]["val_acc"]

The config is `jaxnets.training.config`; the data, model and state a run is
built from, `jaxnets.training.data_setup`; the run folder (open, resume,
repair), `jaxnets.training.run_folder`. This module runs the epochs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxnets import data
from jaxnets.contract import InputContract
from jaxnets.paths import expand_path
from jaxnets.report import json_safe
from jaxnets.training import distributed, run_folder
from jaxnets.training.checkpoint import Checkpoints
from jaxnets.training.config import RESUME_FROM_BEST, TrainConfig
from jaxnets.training.data_setup import Splits, build, learning_rate_schedule, load_splits, resolve
from jaxnets.training.lock import RunLock
from jaxnets.training.state import TrainState
from jaxnets.training.steps import Steps, evaluate, make_steps, merge, reduce_steps, summarize
from jaxnets.training.tensorboard import TensorBoard


class NonFiniteLoss(FloatingPointError):
    """The training loss, the held-out loss or the weights became NaN or infinite."""



class FitResult(NamedTuple):
    """What `fit` returns: the final `state`, the per-epoch `history` rows, the flax `model`, its `steps`, the
    resolved `config` and the input `contract`."""

    state: TrainState
    history: list[dict]
    model: Any
    steps: Steps
    config: TrainConfig  # the resolved config the run trained with (what its checkpoints store)
    contract: InputContract  # its inputs: image shape, the normalisation used, class names



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
    data_cache: bool = True,
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
      splits: pre-loaded data (default: `load_splits(config, cache=data_cache)`).
      progress: show a tqdm bar (None: only on a terminal).
      log: where the per-epoch lines go.
      tensorboard: also write TensorBoard scalars and the config under
        `workdir/tensorboard` (see `jaxnets.training.tensorboard`).
      mesh: the devices to train on (`distributed.data_parallel_mesh(devices)`;
        default: all of them). One device trains exactly as before.
      data_cache: read and write the decoded-data caches when loading the data
        (False: neither; True: `data.load`'s default, on unless
        `$JAXNETS_DATA_CACHE=0`). Not a config field: caching changes no result.

    Returns:
      FitResult(state, history, model, steps, config, contract): `config` is the resolved
      one (`resolve`: model arguments from the data), as stored; history holds one dict per
      epoch (epoch, train_loss, train_acc, val_loss, val_acc, test_acc, lr
      (the train step's `lr` metric: the learning rate of the epoch's last
      step), seconds, images_per_second; for classification also val_top5 and
      test_top5 when those splits exist; with dtype='float16' also
      skipped_steps (steps whose gradients overflowed, update skipped) and
      loss_scale (the dynamic loss scale at the epoch's end)).

    Raises:
      ConfigError: a config value that makes no sense (a ValueError; `.field` names it).
      ValueError: resume without a workdir, or a batch size
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
        log, progress, tensorboard = distributed.silent, False, False
    if workdir is None:
        if resume:
            raise ValueError("resume=True needs a workdir")
        return _fit(config, None, None, False, splits, progress, log, False, mesh, data_cache)
    # The lock guards against a second *run*; the processes of one run share the folder (process 0 holds it).
    lock = RunLock(workdir).acquire() if distributed.is_main_process() else None
    try:
        return _fit(config, workdir, lock, resume, splits, progress, log, tensorboard, mesh, data_cache)
    finally:
        if lock is not None:
            lock.release()


def _fit(config: TrainConfig, workdir: Path | None, lock: RunLock | None, resume: bool | str, splits: Splits | None,
         progress, log, tensorboard: bool, mesh: jax.sharding.Mesh, data_cache: bool) -> FitResult:
    checkpoints = None if workdir is None else run_folder.open_workdir(workdir, lock, resume, config.keep, log)
    board = None
    try:
        source, resumed_meta = run_folder.resume_point(workdir, checkpoints, resume, config)
        splits = splits or load_splits(config, log, cache=data_cache)
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
        schedule = learning_rate_schedule(config, len(train_loader))
        model, state = build(config, schedule)
        if parallel:
            state = distributed.replicate(state, mesh)
            log(f"data parallel: batch {config.batch_size} split over {distributed.describe(mesh)}")
        steps = make_steps(config.loss, config.mode, config.label_smoothing, accumulate=config.accumulate,
                           learning_rate=schedule)
        fingerprint = run_folder.data_fingerprint(splits.train) if checkpoints is not None else None

        history, start_epoch, best_val, best_epoch = [], 0, -math.inf, None
        if source == "best":
            epoch = checkpoints.checkpoint_from_best(state.arrays())
            log(f"note: copied best/{epoch} to checkpoints/{epoch}: the run continues from epoch {epoch}")
            if distributed.is_main_process():
                run_folder.keep_later_history(workdir, epoch, log)
        if source is not None:
            state, history = run_folder.resume_run(checkpoints, config, state, fingerprint, resumed_meta, log)
            start_epoch = history[-1]["epoch"] if history else checkpoints.latest_epoch()
            best_epoch = run_folder.history_best_epoch(history)
            best_val = next((h["val_acc"] for h in history if h["epoch"] == best_epoch), -math.inf)
            if distributed.is_main_process():
                run_folder.write_run_files(workdir, history, config, checkpoints)
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
                meta = {"config": config.to_json(), "history": json_safe(history), "data_fingerprint": fingerprint,
                        "best_epoch": best_epoch, "best_val_acc": best_val if math.isfinite(best_val) else None,
                        "input_contract": contract.to_json()}
                checkpoints.save(epoch + 1, arrays, meta, is_best)  # collective: every process calls it
                if distributed.is_main_process():
                    run_folder.write_run_files(workdir, history, config, checkpoints)
            if board is not None:
                board.write_epoch(record)
            log(_format_epoch(record, config.epochs))
    finally:
        if board is not None:
            board.close()
        if checkpoints is not None:
            checkpoints.close()
    return FitResult(state, history, model, steps, config, contract)


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


def _format_epoch(h: dict, epochs: int) -> str:
    parts = [f"epoch {h['epoch']:>3}/{epochs}", f"train loss {h['train_loss']:.4f}"]
    if h.get("train_acc") is not None:
        parts.append(f"acc {h['train_acc']:.2%}")
    if h.get("val_loss") is not None:
        parts.append(f"| held-out loss {h['val_loss']:.4f}"
                     + (f" acc {h['val_acc']:.2%}" if h.get("val_acc") is not None else ""))
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
