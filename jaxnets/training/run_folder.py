"""A run folder: open it for a run, decide where a resumed run continues from, and repair what a killed run left.

`fit` (`jaxnets.training.loop`) owns the folder through a `RunLock` and calls,
in order: `open_workdir` (refuse to overwrite, check writability, remove
partial saves), `resume_source` (checkpoints/, best/ or nothing), and for a
resumed run `resume` (check the config and the data, restore, repair `best/`).
`write_run_files` writes `history.json` and `curves.png` after every epoch.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxnets import data

# Module-level names on purpose: the kill -9 tests replace `_write_json` / `plot_history` here to die mid-write.
from jaxnets.report import plot_history
from jaxnets.report import write_json as _write_json
from jaxnets.training import distributed
from jaxnets.training.checkpoint import CheckpointError, Checkpoints
from jaxnets.training.config import RESUME_FROM_BEST, RESUME_MUST_MATCH, TrainConfig
from jaxnets.training.lock import WRITE_PROBE_PREFIX, RunLock, WorkdirNotWritable, probe_writable
from jaxnets.training.state import TrainState


def open_workdir(workdir: Path, lock: RunLock | None, resume: bool | str, keep: int, log) -> Checkpoints:
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



def resume_point(workdir: Path | None, checkpoints: Checkpoints | None, resume: bool | str,
                 config: TrainConfig) -> tuple[str | None, dict | None]:
    """Whether and whence this run resumes: `(source, meta)`, decided once, before any data is loaded.

    `source` is 'checkpoints', 'best' or None (a new run; `meta` None); `meta`
    is the metadata of the checkpoint it continues from. A config field that
    must match (`RESUME_MUST_MATCH`, but `model_kwargs`, which only the data
    complete) is checked here, so a changed run is refused before time is spent
    on its data.

    Raises:
      CheckpointError: as `resume_source`, or a field that must match differs (named).
    """
    source = resume_source(workdir, checkpoints, resume)
    if source is None:
        return None, None
    meta = checkpoints.read_meta(best=source == "best")
    check_resume_config(meta, config, [f for f in RESUME_MUST_MATCH if f != "model_kwargs"])
    return source, meta


def resume_source(workdir: Path | None, checkpoints: Checkpoints | None, resume: bool | str) -> str | None:
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


def keep_later_history(workdir: Path, epoch: int, log) -> None:
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


def resume_run(checkpoints: Checkpoints, config: TrainConfig, fresh: TrainState, fingerprint: str, meta: dict,
               log) -> tuple[TrainState, list[dict]]:
    """Check the config and the data, restore and verify the latest checkpoint, put `best/` in line with its history.

    Args:
      checkpoints: the run folder's checkpoints (the latest one is restored).
      config: the resolved config of this run (`model_kwargs` completed from the data).
      fresh: a new TrainState of this run: the structure, shapes and dtypes to restore into.
      fingerprint: `data_fingerprint` of this run's training split.
      meta: the latest checkpoint's metadata, as `resume_point` read it.
      log: where notes go.

    Returns:
      `(state, history)`: the restored state and the history up to its epoch.

    Raises:
      CheckpointError: a config field that must match differs (named), the training data differ, or the
        checkpoint is corrupt.
    """
    saved = check_resume_config(meta, config, RESUME_MUST_MATCH)  # before restoring: clearer than a shape mismatch
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
    best = meta.get("best_epoch", history_best_epoch(history))
    repair_best(checkpoints, epoch, best, state_arrays, meta, fresh, log)
    log(f"resumed from {checkpoints.workdir / 'checkpoints' / str(epoch)} (epoch {epoch}, step {int(state.step)})")
    return state, history


def check_resume_config(meta: dict, config: TrainConfig, fields) -> TrainConfig:
    """The checkpoint's config; raises CheckpointError naming the first of `fields` that differs in `config`."""
    saved = TrainConfig.from_json(meta["config"])
    for field in fields:
        if getattr(saved, field) != getattr(config, field):
            raise CheckpointError(f"cannot resume: the checkpoint was trained with {field}={getattr(saved, field)!r}, "
                                  f"this run asks for {getattr(config, field)!r}. Use the same {field}, or start a "
                                  "new run in another workdir")
    return saved


def repair_best(checkpoints: Checkpoints, epoch: int, best_epoch: int | None, arrays: dict, meta: dict,
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


def data_fingerprint(dataset: data.Dataset) -> str:
    """A short hash of a split's images and labels (what a resumed run must train on again)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{dataset.images.shape}|{dataset.labels.shape}|".encode())
    digest.update(np.ascontiguousarray(dataset.images).tobytes())
    digest.update(np.ascontiguousarray(dataset.labels).astype(np.int32).tobytes())
    return digest.hexdigest()


def write_run_files(workdir: Path, history: list[dict], config: TrainConfig, checkpoints: Checkpoints) -> None:
    """`history.json` and `curves.png` from `history` (each written atomically)."""
    try:
        _write_json(workdir / "history.json", history)
        plot_history(history, workdir / "curves.png", f"{config.model} on {config.dataset} ({config.mode})")
    except OSError as err:
        space = " (the disk is full)" if err.errno == errno.ENOSPC else ""
        raise WorkdirNotWritable(f"cannot write {workdir / 'history.json'} / curves.png{space}: {err}. Epochs "
                                 f"{checkpoints.epochs()} are saved; free space, then --resume rewrites them.") from err


def history_best_epoch(history: list[dict]) -> int | None:
    """The first epoch with the highest held-out accuracy (how `fit` picks `best/`)."""
    best, best_val = None, -math.inf
    for h in history:
        if h.get("val_acc") is not None and h["val_acc"] > best_val:
            best, best_val = h["epoch"], h["val_acc"]
    return best
