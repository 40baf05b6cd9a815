"""Checkpoints with orbax-checkpoint. Every orbax call of jaxnets lives here.

Two PyTorch habits, the JAX way:
  * "save the state_dict" -> `Checkpoints`, a run's folder of TrainStates
    (params, batch_stats, optimizer state, RNG, step) plus the run's JSON
    metadata, one per epoch: the last N and the best by held-out accuracy.
  * "save the whole model" (`torch.save(net)`) -> `save_model` /
    `load_model`, which store the architecture's name and arguments beside
    the variables, so loading rebuilds the model with no user code.

What is guaranteed (RELIABILITY.md lists the tests):
  * One process at a time owns a run folder (`RunLock`: an OS file lock
    that dies with its process, plus the holder's pid/host for messages).
  * Writes are atomic (orbax writes to a `*.orbax-checkpoint-tmp*` folder
    and renames it when complete); `Checkpoints.remove_partial_saves`
    deletes what a killed save left behind.
  * Every checkpoint carries a SHA-256 of its arrays (orbax 0.12 verifies
    only its zarr shard indexes, not the data), checked on every restore.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import filelock
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxnets import models
from jaxnets.paths import expand_path
from jaxnets.report import atomic_write_text

MODEL_FORMAT = "jaxnets-model/1"
CHECKSUM_ALGORITHM = "sha256-of-arrays/1"
_TMP_MARKER = ".orbax-checkpoint-tmp"  # orbax's suffix for a save in progress


class CheckpointError(RuntimeError):
    """A checkpoint or run folder is missing, corrupt, busy, unwritable, or does not match what is restored."""


class RunLocked(CheckpointError):
    """Another live process owns the run folder."""


class WorkdirNotWritable(CheckpointError):
    """The run folder cannot be written (read-only, a file in the way, disk full)."""


def encode_kwargs(kwargs: dict) -> dict:
    """Model keyword arguments -> JSON-able (dtypes by name, tuples as lists)."""
    out = {}
    for key, value in kwargs.items():
        if key == "dtype":
            value = jnp.dtype(value).name
        elif isinstance(value, tuple):
            value = list(value)
        out[key] = value
    return out


def decode_kwargs(kwargs: dict) -> dict:
    """The inverse of `encode_kwargs`."""
    out = {}
    for key, value in kwargs.items():
        if key == "dtype":
            value = jnp.dtype(value)
        elif isinstance(value, list):
            value = tuple(value)
        out[key] = value
    return out


def _abstract(tree: Any) -> Any:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def arrays_checksum(tree: Any) -> str:
    """SHA-256 over every leaf's key path, dtype, shape and bytes (host copies), in pytree order."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        value = np.ascontiguousarray(jax.device_get(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}|{value.dtype.str}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _first_line(err: BaseException) -> str:
    text = str(err)
    return f"{type(err).__name__}: {text.splitlines()[0][:300]}" if text else type(err).__name__


def _root_os_error(err: BaseException) -> OSError | None:
    """The OSError behind `err` (orbax wraps them), if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError):
            return err
        err = err.__cause__ or err.__context__
    return None


@contextlib.contextmanager
def _quiet_orbax_logs():
    """Orbax logs every failed background write with a traceback; our exception already says it in one line."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _join_writer_threads(before: set, timeout: float = 120.0) -> None:
    """After a failed save: wait for the writer threads orbax started for it, quietly.

    When one item of a save fails, orbax raises at once while the other
    items' threads are still writing; left alone they would write into the
    folder after we return, and print pages of tracebacks when the
    interpreter exits under them.
    """
    hook = threading.excepthook
    threading.excepthook = lambda args: None  # their errors are the one we already raise
    try:
        with _quiet_orbax_logs():
            deadline = time.monotonic() + timeout
            for thread in set(threading.enumerate()) - before:
                if not thread.daemon and thread is not threading.current_thread():
                    thread.join(max(0.0, deadline - time.monotonic()))
    finally:
        threading.excepthook = hook


# ----------------------------------------------------------------------------- the run folder lock


class RunLock:
    """Exclusive ownership of a run folder by one process.

    The lock itself is `filelock.FileLock` on `workdir/.lock` (an OS `flock`,
    which the kernel drops when its process dies, even under `kill -9`; on
    file systems without `flock`, filelock's own pid/host-stamped soft lock).
    Beside it, `workdir/.lock-holder.json` records the holder's pid, host,
    start time and command line, to name it in errors and to report a stale
    holder (one whose process is gone) when its lock is taken over.
    """

    def __init__(self, workdir: str | Path):
        self.workdir = expand_path(workdir).absolute()
        self.lock_path = self.workdir / ".lock"
        self.holder_path = self.workdir / ".lock-holder.json"
        self._lock = filelock.FileLock(self.lock_path, timeout=0)
        self.previous_holder: dict | None = None

    def holder(self) -> dict | None:
        """What `.lock-holder.json` says (None when absent or unreadable)."""
        try:
            value = json.loads(self.holder_path.read_text())
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def acquire(self) -> "RunLock":
        """Take the folder, or raise.

        Raises:
          RunLocked: a live process holds it (the message names its pid, host and command).
          WorkdirNotWritable: the folder cannot be created or written.
        """
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
        except filelock.Timeout:
            holder = self.holder() or {}
            who = (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}: "
                   f"{holder.get('command')}") if holder else "another process"
            raise RunLocked(f"{self.workdir} is in use by another run ({who}). Wait for it to finish, or choose "
                            "another workdir (--workdir).") from None
        except OSError as err:
            raise WorkdirNotWritable(f"cannot use {self.workdir} as a run folder: {_first_line(err)}. "
                                     "Choose a writable workdir (--workdir).") from err
        previous = self.holder()
        here = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv)}
        if previous and (previous.get("pid"), previous.get("host")) != (here["pid"], here["host"]):
            # The OS lock was free, so its last holder is gone (killed, or it crashed) and left this file behind.
            self.previous_holder = previous
        try:
            atomic_write_text(self.holder_path, json.dumps(here, indent=2))
        except OSError as err:
            self._lock.release()
            raise WorkdirNotWritable(f"cannot write to {self.workdir}: {_first_line(err)}. "
                                     "Choose a writable workdir (--workdir).") from err
        return self

    def release(self) -> None:
        with contextlib.suppress(OSError):
            if (self.holder() or {}).get("pid") == os.getpid():
                self.holder_path.unlink()
        self._lock.release()

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# The name `probe_writable` gives its short-lived file; another process of the same run may be probing at the moment
# a folder is listed, so listings of "is anything saved here" leave these files out.
WRITE_PROBE_PREFIX = ".write-probe-"


def probe_writable(folder: Path) -> None:
    """Create `folder` and write (then remove) a small file in it, so an unusable workdir fails before training.

    Raises:
      WorkdirNotWritable: read-only, a file where a folder should be, or no space left.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=WRITE_PROBE_PREFIX):
            pass
    except OSError as err:
        raise WorkdirNotWritable(f"cannot write to {folder}: {_first_line(err)}. "
                                 "Choose a writable workdir (--workdir).") from err


# ----------------------------------------------------------------------------- a run's checkpoints


def _steps(manager: ocp.CheckpointManager) -> list[int]:
    """The manager's complete steps, read from disk now (orbax caches the list)."""
    manager.reload()
    return sorted(manager.all_steps())


class Checkpoints:
    """A run's checkpoints: `workdir/checkpoints/<epoch>` (last `keep`) and `workdir/best/<epoch>`.

    Each checkpoint holds `state` (TrainState arrays) and `meta` (JSON: the
    run config, the epoch's metrics, the history so far, `best_epoch`, and
    `checksum`, the SHA-256 of the arrays checked by `restore`).

    Opening a `Checkpoints` only reads; writing (`save`, `remove_partial_saves`,
    `place_best`) is for the process holding the folder's `RunLock`.
    """

    def __init__(self, workdir: str | Path, keep: int = 3):
        self.workdir = expand_path(workdir).absolute()  # orbax requires absolute paths
        options = dict(create=True, enable_async_checkpointing=False)
        self._last = ocp.CheckpointManager(self.workdir / "checkpoints",
                                           options=ocp.CheckpointManagerOptions(max_to_keep=keep, **options))
        self._best = ocp.CheckpointManager(self.workdir / "best",
                                           options=ocp.CheckpointManagerOptions(max_to_keep=1, **options))

    def epochs(self) -> list[int]:
        """Epochs with a complete checkpoint, oldest first."""
        return sorted(_steps(self._last))

    def latest_epoch(self) -> int | None:
        epochs = self.epochs()
        return epochs[-1] if epochs else None

    def best_epochs(self) -> list[int]:
        """Epochs in `best/` (one after a clean save)."""
        return sorted(_steps(self._best))

    def best_epoch(self) -> int | None:
        best = self.best_epochs()
        return best[-1] if best else None

    def partial_saves(self) -> list[Path]:
        """Folders a killed save left behind (`*.orbax-checkpoint-tmp*`)."""
        return sorted(p for sub in ("checkpoints", "best") if (self.workdir / sub).is_dir()
                      for p in (self.workdir / sub).iterdir() if _TMP_MARKER in p.name)

    def remove_partial_saves(self) -> list[Path]:
        """Delete what killed saves left behind; returns the folders removed. Only for the lock holder."""
        removed = self.partial_saves()
        for path in removed:
            shutil.rmtree(path)
        if removed:
            self._last.reload()
            self._best.reload()
        return removed

    def _write(self, manager, epoch: int, args, where: str) -> None:
        before = set(threading.enumerate())
        try:
            with _quiet_orbax_logs():
                try:
                    manager.save(epoch, args=args, force=True)
                finally:
                    with contextlib.suppress(Exception):
                        manager.wait_until_finished()
        except BaseException as err:  # orbax/tensorstore raise many types; Ctrl-C lands here too
            _join_writer_threads(before)
            if not isinstance(err, Exception):
                raise
            cause = _root_os_error(err)
            saved = [e for e in self.epochs() if where == "best" or e != epoch]
            kept = f" Epochs {saved} are saved and intact." if saved else ""
            if cause is not None:
                space = " (the disk is full)" if cause.errno == errno.ENOSPC else ""
                raise WorkdirNotWritable(f"cannot save epoch {epoch} to {self.workdir / where}{space}: "
                                         f"{_first_line(cause)}.{kept} Free space or fix permissions, then "
                                         "resume with --resume.") from err
            raise CheckpointError(f"cannot save epoch {epoch} to {self.workdir / where}: {_first_line(err)}.{kept}") from err

    def save(self, epoch: int, state_arrays: dict, meta: dict, is_best: bool) -> None:
        """Write epoch `epoch` to `checkpoints/` (and to `best/` when `is_best`), with the arrays' checksum.

        Raises:
          CheckpointError: `checkpoints/<epoch>` already exists (never overwritten).
          WorkdirNotWritable: the write failed (disk full, permissions); older epochs stay intact.
        """
        if epoch in _steps(self._last):
            raise CheckpointError(f"{self.workdir / 'checkpoints'}: epoch {epoch} is already saved; not overwriting it")
        state_arrays = jax.device_get(state_arrays)
        meta = {**meta, "checksum": {"algorithm": CHECKSUM_ALGORITHM, "value": arrays_checksum(state_arrays)}}
        self._write(self._last, epoch, self._args(state_arrays, meta), "checkpoints")
        if is_best:
            self.place_best(epoch, state_arrays, meta)

    @staticmethod
    def _args(state_arrays: dict, meta: dict):
        return ocp.args.Composite(state=ocp.args.StandardSave(state_arrays), meta=ocp.args.JsonSave(meta))

    def place_best(self, epoch: int, state_arrays: dict, meta: dict) -> None:
        """Make `best/` hold exactly `epoch` (replacing whatever is there). Only for the lock holder."""
        if "checksum" not in meta:
            meta = {**meta, "checksum": {"algorithm": CHECKSUM_ALGORITHM, "value": arrays_checksum(state_arrays)}}
        if epoch in _steps(self._best):
            self._best.delete(epoch)  # a copy from a timeline that was rolled back (finding: clash with best/N)
        self._write(self._best, epoch, self._args(jax.device_get(state_arrays), meta), "best")
        for other in _steps(self._best):
            if other != epoch:
                self._best.delete(other)

    def drop_best_after(self, epoch: int) -> list[int]:
        """Delete `best/` entries newer than `epoch` (left by a run rolled back to `epoch`). Only for the lock holder."""
        dropped = [e for e in _steps(self._best) if e > epoch]
        for e in dropped:
            self._best.delete(e)
        return dropped

    def _older_hint(self, epoch: int, where: Path) -> str:
        others = [e for e in self.epochs() if e < epoch]
        if not others:
            return ""
        return (f" Epochs {others} are also saved: to resume from epoch {others[-1]}, move this one out of the way "
                f"(mv {where / str(epoch)} {self.workdir / f'corrupt-epoch-{epoch}'}) and resume again.")

    def read_meta(self, epoch: int | None = None, best: bool = False) -> dict:
        """The JSON metadata (config, history) of a checkpoint (of `best/` when `best`), without touching its arrays.

        Raises:
          CheckpointError: none saved, or the metadata is unreadable (the message offers older epochs).
        """
        manager = self._best if best else self._last
        if epoch is None:
            epoch = self.best_epoch() if best else self.latest_epoch()
        where = self.workdir / ("best" if best else "checkpoints")
        if epoch is None:
            raise CheckpointError(f"no checkpoint in {where}")
        try:
            meta = manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
            if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
                raise ValueError("no run config in it")
            return meta
        except Exception as err:  # orbax raises many types
            hint = "" if best else self._older_hint(epoch, where)
            raise CheckpointError(f"cannot read {where / str(epoch)} (epoch {epoch}): corrupt metadata "
                                  f"({_first_line(err)}).{hint}") from err

    def restore(self, target_arrays: dict, epoch: int | None = None, best: bool = False) -> tuple[dict, dict]:
        """Restore `(state_arrays, meta)` against `target_arrays`' structure, shapes and dtypes; verify the checksum.

        Raises:
          CheckpointError: none saved, or the checkpoint is corrupt (the checksum
            of its arrays differs from the one saved with them), or it does not
            match the target (a different model or optimizer). The message names
            the epoch and the older epochs one can resume from instead.
        """
        manager = self._best if best else self._last
        where = self.workdir / ("best" if best else "checkpoints")
        steps = sorted(_steps(manager))
        epoch = (steps[-1] if steps else None) if epoch is None else epoch
        if epoch is None:
            raise CheckpointError(f"no checkpoint in {where}")
        hint = "" if best else self._older_hint(epoch, where)
        try:
            with _quiet_orbax_logs():
                restored = manager.restore(epoch, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(_abstract(target_arrays)), meta=ocp.args.JsonRestore()))
        except Exception as err:  # orbax/tensorstore raise many types; all mean "cannot restore this"
            raise CheckpointError(
                f"cannot restore {where / str(epoch)} (epoch {epoch}): it is corrupt or was written for a different "
                f"model/optimizer ({_first_line(err)}).{hint}"
            ) from err
        state, meta = restored["state"], restored["meta"]
        saved = (meta.get("checksum") or {}) if isinstance(meta, dict) else {}
        if saved.get("algorithm") == CHECKSUM_ALGORITHM and saved.get("value") != arrays_checksum(state):
            raise CheckpointError(f"cannot restore {where / str(epoch)} (epoch {epoch}): corrupt, its arrays do not "
                                  f"match the checksum saved with them (the files changed after they were written)."
                                  f"{hint}")
        return state, meta

    def checkpoint_from_best(self, target_arrays: dict) -> int:
        """Copy `best/<N>` to `checkpoints/<N>` (verified first), so a run whose `checkpoints/` is gone resumes from N.

        `best/` holds a whole TrainState (weights, optimizer state, RNG, step) and
        the history up to its epoch, so resuming from the copy is resuming from
        epoch N exactly. Only for the lock holder.

        Returns:
          N, the epoch copied.

        Raises:
          CheckpointError: `best/` is empty, corrupt or written for another model.
        """
        arrays, meta = self.restore(target_arrays, best=True)
        epoch = self.best_epoch()
        self._write(self._last, epoch, self._args(arrays, meta), "checkpoints")
        return epoch

    def close(self) -> None:
        self._last.close()
        self._best.close()


# ----------------------------------------------------------------------------- whole models


def _is_model_folder(path: Path) -> bool:
    """Whether `path` is a folder `save_model` wrote (and nothing else): what `overwrite=True` may replace."""
    try:
        if not path.is_dir() or path.is_symlink():
            return False
        info = json.loads((path / "model.json").read_text())
        return (isinstance(info, dict) and info.get("format") == MODEL_FORMAT and (path / "variables").is_dir()
                and {p.name for p in path.iterdir()} <= {"model.json", "variables"})
    except (OSError, ValueError):
        return False


def save_model(path: str | Path, name: str, variables: dict, overwrite: bool = False, **create_kwargs) -> Path:
    """`torch.save(model)`, the JAX way: architecture + variables in one folder.

    Args:
      path: folder to create.
      name: the `jaxnets.models` name the variables belong to.
      variables: `{'params', ['batch_stats']}`.
      overwrite: replace an existing model folder (one `save_model` wrote and
        `load_model` would read). Any other file or folder at `path` is never
        replaced.
      **create_kwargs: the arguments given to `models.create` (num_classes, ...).

    Raises:
      FileExistsError: `path` exists and `overwrite` is False, or it is not a
        model folder written by `save_model`.
      ValueError: the variables do not fit `models.create(name, **create_kwargs)`.
    """
    path = expand_path(path).absolute()
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{path} already exists; choose another path or pass overwrite=True")
        if not _is_model_folder(path):
            raise FileExistsError(f"{path} exists and is not a model folder written by save_model (only model.json "
                                  "and variables/); overwrite=True replaces only those. Choose another path.")
    model = models.create(name, **create_kwargs)
    expected = jax.tree.map(lambda s: (s.shape, s.dtype), jax.eval_shape(lambda: models.init(model, jax.random.key(0))))
    given = jax.tree.map(lambda a: (tuple(np.shape(a)), jnp.asarray(a).dtype), dict(variables))
    if jax.tree.structure(expected) != jax.tree.structure(given) or expected != given:
        raise ValueError(f"variables do not fit {name} with {create_kwargs}: wrong keys or shapes")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    old = path.parent / f".{path.name}.replaced-{os.getpid()}"
    try:
        (staging / "model.json").write_text(json.dumps(
            {"format": MODEL_FORMAT, "name": name, "kwargs": encode_kwargs(create_kwargs)}, indent=2))
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(staging / "variables", jax.tree.map(jnp.asarray, dict(variables)))
        if path.exists():
            os.replace(path, old)  # moved aside, not deleted, until the new folder is in place
        os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return path


def load_model(path: str | Path):
    """The inverse of `save_model`: `(model, variables)`, no user code needed.

    Raises:
      CheckpointError: not a jaxnets model folder, its `model.json` is malformed
        (any wrong type or value), or its variables are corrupt.
    """
    path = expand_path(path).absolute()
    try:
        info = json.loads((path / "model.json").read_text())
        if not isinstance(info, dict) or info.get("format") != MODEL_FORMAT:
            raise ValueError(f"format {info.get('format') if isinstance(info, dict) else info!r}")
        name, kwargs = info.get("name"), info.get("kwargs", {})
        if not isinstance(name, str) or not isinstance(kwargs, dict):
            raise ValueError("'name' must be a string and 'kwargs' an object")
        model = models.create(name, **decode_kwargs(kwargs))
        target = _abstract(jax.eval_shape(lambda: models.init(model, jax.random.key(0))))
    except Exception as err:  # malformed JSON values surface as many types (TypeError, ZeroDivisionError, ...)
        raise CheckpointError(f"{path} is not a model saved by jaxnets.save_model ({_first_line(err)})") from err
    try:
        with _quiet_orbax_logs(), ocp.StandardCheckpointer() as checkpointer:
            variables = checkpointer.restore(path / "variables", target)
    except Exception as err:  # orbax/tensorstore raise many types
        raise CheckpointError(f"cannot restore {path / 'variables'}: corrupt or mismatched ({_first_line(err)})") from err
    return model, variables
