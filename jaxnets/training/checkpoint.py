"""Checkpoints with orbax-checkpoint. Every orbax call of jaxnets lives here.

Two PyTorch habits, the JAX way:
  * "save the state_dict" -> `Checkpoints`, a run's folder of TrainStates
    (params, batch_stats, optimizer state, RNG, step) plus the run's JSON
    metadata, one per epoch: the last N and the best by held-out accuracy.
  * "save the whole model" (`torch.save(net)`) -> `save_model` /
    `load_model`, which store the architecture's name and arguments beside
    the variables, so loading rebuilds the model with no user code.

Writes are atomic (orbax writes to a temporary folder and renames it when
complete), so a process killed mid-save never leaves a broken latest
checkpoint; existing checkpoints are never overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxnets import models

MODEL_FORMAT = "jaxnets-model/1"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not match what is being restored."""


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


class Checkpoints:
    """A run's checkpoints: `workdir/checkpoints/<epoch>` (last `keep`) and `workdir/best/<epoch>`.

    Each checkpoint holds `state` (TrainState arrays) and `meta` (JSON: the
    run config, the epoch's metrics and the history so far).
    """

    def __init__(self, workdir: str | Path, keep: int = 3):
        self.workdir = Path(workdir).absolute()  # orbax requires absolute paths
        options = dict(create=True, enable_async_checkpointing=False)
        self._last = ocp.CheckpointManager(self.workdir / "checkpoints",
                                           options=ocp.CheckpointManagerOptions(max_to_keep=keep, **options))
        self._best = ocp.CheckpointManager(self.workdir / "best",
                                           options=ocp.CheckpointManagerOptions(max_to_keep=1, **options))

    def epochs(self) -> list[int]:
        """Epochs with a complete checkpoint, oldest first."""
        return sorted(self._last.all_steps())

    def latest_epoch(self) -> int | None:
        return self._last.latest_step()

    def best_epoch(self) -> int | None:
        return self._best.latest_step()

    def save(self, epoch: int, state_arrays: dict, meta: dict, is_best: bool) -> None:
        """Write epoch `epoch` (and to `best/` when `is_best`). Refuses to overwrite."""
        if epoch in self._last.all_steps():
            raise CheckpointError(f"{self.workdir / 'checkpoints'}: epoch {epoch} is already saved; not overwriting it")
        args = ocp.args.Composite(state=ocp.args.StandardSave(state_arrays), meta=ocp.args.JsonSave(meta))
        self._last.save(epoch, args=args)
        if is_best:
            self._best.save(epoch, args=args, force=True)
        self._last.wait_until_finished()
        self._best.wait_until_finished()

    def read_meta(self, epoch: int | None = None) -> dict:
        """The JSON metadata (config, history) of a checkpoint, without touching its arrays."""
        epoch = self._last.latest_step() if epoch is None else epoch
        if epoch is None:
            raise CheckpointError(f"no checkpoint in {self.workdir / 'checkpoints'}")
        try:
            return self._last.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as err:  # orbax raises many types
            raise CheckpointError(f"cannot read {self.workdir / 'checkpoints' / str(epoch)}: corrupt metadata "
                                  f"({type(err).__name__}: {err})") from err

    def restore(self, target_arrays: dict, epoch: int | None = None, best: bool = False) -> tuple[dict, dict]:
        """Restore `(state_arrays, meta)` against `target_arrays`' structure, shapes and dtypes.

        Raises:
          CheckpointError: none saved, or the checkpoint is corrupt or does not
            match the target (a different model or optimizer).
        """
        manager = self._best if best else self._last
        epoch = manager.latest_step() if epoch is None else epoch
        where = self.workdir / ("best" if best else "checkpoints")
        if epoch is None:
            raise CheckpointError(f"no checkpoint in {where}")
        try:
            restored = manager.restore(epoch, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(_abstract(target_arrays)), meta=ocp.args.JsonRestore()))
        except Exception as err:  # orbax/tensorstore raise many types; all mean "cannot restore this"
            others = [e for e in manager.all_steps() if e != epoch]
            hint = f" Epochs {others} are also saved; move {where / str(epoch)} aside to resume from them." if others else ""
            raise CheckpointError(
                f"cannot restore {where / str(epoch)}: it is corrupt or was written for a different model/optimizer "
                f"({type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}).{hint}"
            ) from err
        return restored["state"], restored["meta"]

    def close(self) -> None:
        self._last.close()
        self._best.close()


def save_model(path: str | Path, name: str, variables: dict, overwrite: bool = False, **create_kwargs) -> Path:
    """`torch.save(model)`, the JAX way: architecture + variables in one folder.

    Args:
      path: folder to create.
      name: the `jaxnets.models` name the variables belong to.
      variables: `{'params', ['batch_stats']}`.
      overwrite: replace an existing folder (never done otherwise).
      **create_kwargs: the arguments given to `models.create` (num_classes, ...).

    Raises:
      FileExistsError: `path` exists and `overwrite` is False.
      ValueError: the variables do not fit `models.create(name, **create_kwargs)`.
    """
    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another path or pass overwrite=True")
    model = models.create(name, **create_kwargs)
    expected = jax.tree.map(lambda s: (s.shape, s.dtype), jax.eval_shape(lambda: models.init(model, jax.random.key(0))))
    given = jax.tree.map(lambda a: (tuple(np.shape(a)), jnp.asarray(a).dtype), dict(variables))
    if jax.tree.structure(expected) != jax.tree.structure(given) or expected != given:
        raise ValueError(f"variables do not fit {name} with {create_kwargs}: wrong keys or shapes")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        (staging / "model.json").write_text(json.dumps(
            {"format": MODEL_FORMAT, "name": name, "kwargs": encode_kwargs(create_kwargs)}, indent=2))
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(staging / "variables", jax.tree.map(jnp.asarray, dict(variables)))
        if path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def load_model(path: str | Path):
    """The inverse of `save_model`: `(model, variables)`, no user code needed.

    Raises:
      CheckpointError: not a jaxnets model folder, or its files are corrupt.
    """
    path = Path(path).absolute()
    try:
        info = json.loads((path / "model.json").read_text())
        if info.get("format") != MODEL_FORMAT:
            raise ValueError(f"format {info.get('format')!r}")
        model = models.create(info["name"], **decode_kwargs(info["kwargs"]))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path} is not a model saved by jaxnets.save_model ({err})") from err
    target = _abstract(jax.eval_shape(lambda: models.init(model, jax.random.key(0))))
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            variables = checkpointer.restore(path / "variables", target)
    except Exception as err:  # orbax/tensorstore raise many types
        raise CheckpointError(f"cannot restore {path / 'variables'}: corrupt or mismatched "
                              f"({type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''})") from err
    return model, variables
