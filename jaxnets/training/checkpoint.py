"""A training run's checkpoints with orbax-checkpoint: `Checkpoints`, the run folder of TrainStates.

PyTorch's "save the state_dict", the JAX way: `workdir/checkpoints/<epoch>`
holds a TrainState (params, batch_stats, optimizer state, RNG, step) plus the
run's JSON metadata, one per epoch: the last N and, in `workdir/best/`, the
best by held-out accuracy. Whole models (`save_model` / `load_model`) live in
`jaxnets.models.saving`; the run folder's lock in `jaxnets.training.lock`.

What is guaranteed (RELIABILITY.md lists the tests):
  * Writes are atomic (orbax writes to a `*.orbax-checkpoint-tmp*` folder
    and renames it when complete); `Checkpoints.remove_partial_saves`
    deletes what a killed save left behind.
  * Every checkpoint carries a SHA-256 of its arrays (`arrays_checksum`:
    orbax verifies only its zarr shard indexes, not the data), checked on
    every restore; a checkpoint without one restores with an
    `UnverifiedCheckpointWarning`.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import threading
import time
import warnings
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from jaxnets.errors import describe
from jaxnets.models.saving import CheckpointError
from jaxnets.orbax_io import CHECKSUM_ALGORITHM, abstract, arrays_checksum, quiet_abandoned_reads, quiet_orbax_logs
from jaxnets.paths import expand_path
from jaxnets.training.lock import WorkdirNotWritable

_TMP_MARKER = ".orbax-checkpoint-tmp"  # orbax's suffix for a save in progress


class UnverifiedCheckpointWarning(UserWarning):
    """A run checkpoint saved without a checksum of its arrays: restored, but its arrays could not be verified."""


def _root_os_error(err: BaseException) -> OSError | None:
    """The OSError behind `err` (orbax wraps them), if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError):
            return err
        err = err.__cause__ or err.__context__
    return None




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
        with quiet_orbax_logs():
            deadline = time.monotonic() + timeout
            for thread in set(threading.enumerate()) - before:
                if not thread.daemon and thread is not threading.current_thread():
                    thread.join(max(0.0, deadline - time.monotonic()))
    finally:
        threading.excepthook = hook


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
            with quiet_orbax_logs():
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
                                         f"{describe(cause)}.{kept} Free space or fix permissions, then "
                                         "resume with --resume.") from err
            raise CheckpointError(f"cannot save epoch {epoch} to {self.workdir / where}: "
                                  f"{describe(err)}.{kept}") from err

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
            self._best.delete(epoch)  # left by a rolled-back timeline: orbax saves no step twice
        self._write(self._best, epoch, self._args(jax.device_get(state_arrays), meta), "best")
        for other in _steps(self._best):
            if other != epoch:
                self._best.delete(other)

    def drop_best_after(self, epoch: int) -> list[int]:
        """Delete `best/` entries newer than `epoch` (left by a run rolled back to `epoch`).

        Only for the lock holder.
        """
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
                                  f"({describe(err)}).{hint}") from err

    def restore(self, target_arrays: dict, epoch: int | None = None, best: bool = False) -> tuple[dict, dict]:
        """Restore `(state_arrays, meta)` against `target_arrays`' structure, shapes and dtypes; verify the checksum.

        Raises:
          CheckpointError: none saved, or the checkpoint is corrupt (the checksum
            of its arrays differs from the one saved with them), or it does not
            match the target (a different model or optimizer). The message names
            the epoch and the older epochs one can resume from instead.

        Warns:
          UnverifiedCheckpointWarning: the checkpoint's metadata holds no checksum
            (an older jaxnets, or edited): restored, but not verified.
        """
        manager = self._best if best else self._last
        where = self.workdir / ("best" if best else "checkpoints")
        steps = sorted(_steps(manager))
        epoch = (steps[-1] if steps else None) if epoch is None else epoch
        if epoch is None:
            raise CheckpointError(f"no checkpoint in {where}")
        hint = "" if best else self._older_hint(epoch, where)
        failure = None
        with quiet_abandoned_reads():
            try:
                with quiet_orbax_logs():
                    restored = manager.restore(epoch, args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract(target_arrays)), meta=ocp.args.JsonRestore()))
            except Exception as err:  # orbax/tensorstore raise many types; all mean "cannot restore this"
                failure = describe(err)  # kept as text: the exception would keep the abandoned reads alive
        if failure is not None:
            raise CheckpointError(
                f"cannot restore {where / str(epoch)} (epoch {epoch}): it is corrupt or was written for a different "
                f"model/optimizer ({failure}).{hint}")
        state, meta = restored["state"], restored["meta"]
        saved = (meta.get("checksum") or {}) if isinstance(meta, dict) else {}
        if not isinstance(saved, dict) or saved.get("algorithm") != CHECKSUM_ALGORITHM:
            warnings.warn(f"{where / str(epoch)} (epoch {epoch}) has no checksum of its arrays (saved by an older "
                          "jaxnets, or its metadata was edited), so they could not be verified",
                          UnverifiedCheckpointWarning, stacklevel=2)
        elif saved.get("value") != arrays_checksum(state):
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
