"""Whole models: `save_model` / `load_model`, PyTorch's "save the whole model" (`torch.save(net)`) the JAX way.

A model folder stores the architecture's name and arguments beside the
variables (orbax), so loading rebuilds the model with no user code:

    >>> from jaxnets.models.saving import save_model, load_model
    >>> save_model("runs/lenet-model", "lenet", variables, dataset="digits")
    >>> model, variables = load_model("runs/lenet-model")

What is guaranteed (RELIABILITY.md lists the tests):
  * Every model folder carries a SHA-256 of its arrays (orbax verifies only
    its zarr shard indexes, not the data), checked by `load_model`. The same
    checksum (`arrays_checksum`) guards a training run's checkpoints
    (`jaxnets.training.checkpoint`).
  * A `save_model` killed midway is completed or rolled back by the next
    `save_model`/`load_model` of that path (`recover_interrupted_save`).
  * `check_variables` is the one test that variables fit a model, used by
    `save_model` and by `jaxnets.export.save`.

This module needs no training code (`jaxnets.training` re-exports
`save_model` and `load_model`), so exporting or converting a model folder
imports no training machinery.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxnets import models
from jaxnets.contract import InputContract
from jaxnets.errors import describe
from jaxnets.orbax_io import CHECKSUM_ALGORITHM, abstract, arrays_checksum, quiet_abandoned_reads, quiet_orbax_logs
from jaxnets.paths import expand_path

MODEL_FORMAT = "jaxnets-model/1"


class CheckpointError(RuntimeError):
    """A checkpoint or run folder is missing, corrupt, busy, unwritable, or does not match what is restored."""


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


# ----------------------------------------------------------------------------- whole models


class InterruptedSaveWarning(UserWarning):
    """A `save_model` interrupted between its steps was completed or rolled back, or is named for the user."""


class UnverifiedModelWarning(UserWarning):
    """A model folder saved without a checksum (an older jaxnets): its arrays cannot be verified."""


# A save writes `.<name>.saving-<pid>@<host>` beside the target, then moves an existing model aside to
# `.<name>.replaced-<pid>@<host>`, renames the new folder into place and deletes the old one. `model.json`
# is written last, so a saving folder holding it is complete.
_SAVING, _REPLACED = "saving", "replaced"
_SAVES_IN_PROGRESS: set[Path] = set()  # this process's own saves (their folders are not leftovers)


def _owner_token() -> str:
    return f"{os.getpid()}@{socket.gethostname()}"


def _side_folder(path: Path, kind: str) -> Path:
    return path.parent / f".{path.name}.{kind}-{_owner_token()}"


def _leftovers(path: Path) -> list[tuple[str, Path, bool]]:
    """`(kind, folder, owner alive)` for every folder a save into `path` left beside it (`saving`/`replaced`).

    An owner on another host counts as alive: its process cannot be checked from here.
    """
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.({_SAVING}|{_REPLACED})-(\d+)(?:@(.*))?$")
    found = []
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return []
    for sibling in sorted(siblings):
        match = pattern.match(sibling.name)
        if not match or not sibling.is_dir() or sibling.is_symlink():
            continue
        pid, host = int(match.group(2)), match.group(3)
        if host not in (None, socket.gethostname()):
            alive = True
        elif pid == os.getpid():
            alive = sibling in _SAVES_IN_PROGRESS
        else:
            try:
                os.kill(pid, 0)
                alive = True
            except ProcessLookupError:
                alive = False
            except OSError:  # EPERM: a live process of another user
                alive = True
        found.append((match.group(1), sibling, alive))
    return found


def _legacy_staging(path: Path) -> list[Path]:
    """Folders `.<name>.XXXXXXXX` holding model files: what save_model wrote before its folders had owner names."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.[a-z0-9_]{{8}}$")
    try:
        return sorted(p for p in path.parent.iterdir() if pattern.match(p.name) and p.is_dir() and not p.is_symlink()
                      and ((p / "model.json").exists() or (p / "variables").exists()))
    except OSError:
        return []


def _is_complete_save(folder: Path) -> bool:
    try:
        info = json.loads((folder / "model.json").read_text())
        return isinstance(info, dict) and info.get("format") == MODEL_FORMAT and (folder / "variables").is_dir()
    except (OSError, ValueError):
        return False


def recover_interrupted_save(path: str | Path) -> list[str]:
    """Complete or roll back a `save_model` into `path` that was killed midway; say what was done.

    Only folders of dead savers are touched (a live one, or one on another
    host, is named instead). Killed between its two renames (nothing at
    `path`; the old model moved aside, the new one complete): the new model
    is moved into place and the old one, replaced on request, removed. No
    complete new model: the old one is put back. Killed before it moved
    anything (`path` intact): an incomplete new folder is removed; a complete
    one is named with the commands to use or drop it. Killed after its second
    rename: the old model it replaced is removed. `save_model` and
    `load_model` call this first; each action is an `InterruptedSaveWarning`.

    Returns:
      One line per action or folder named (empty: nothing was left).
    """
    path = expand_path(path).absolute()
    leftovers = _leftovers(path)
    notes = []
    live = [folder for _, folder, alive in leftovers if alive]
    saving = [folder for kind, folder, alive in leftovers if kind == _SAVING and not alive]
    replaced = [folder for kind, folder, alive in leftovers if kind == _REPLACED and not alive]
    complete = [folder for folder in saving if _is_complete_save(folder)]
    try:
        if not (path.exists() or path.is_symlink()) and not live:
            if replaced and complete:
                os.replace(complete[-1], path)
                notes.append(f"finished a save_model into {path} that was killed between its two renames: moved the "
                             f"new model from {complete[-1].name} into place")
            elif replaced:
                os.replace(replaced[-1], path)
                notes.append(f"put back the model a killed save_model into {path} had moved aside to "
                             f"{replaced[-1].name} (the new one was never complete)")
                replaced = replaced[:-1]
            elif complete:
                os.replace(complete[-1], path)
                notes.append(f"finished a save_model into {path} that was killed before its rename: moved the "
                             f"complete new model from {complete[-1].name} into place")
        if path.exists():
            for folder in replaced:
                shutil.rmtree(folder)
                notes.append(f"removed {folder}, the model a finished save_model into {path} replaced")
            for folder in saving:
                if not folder.exists():
                    continue
                if _is_complete_save(folder):
                    notes.append(f"{folder} holds a complete model that a killed save_model never moved into "
                                 f"place; {path} is the one from before. To use the newer one: rm -r '{path}' && "
                                 f"mv '{folder}' '{path}'; to drop it: rm -r '{folder}'")
                else:
                    shutil.rmtree(folder)
                    notes.append(f"removed {folder}, the incomplete folder of a killed save_model into {path}")
    except OSError as err:
        notes.append(f"could not repair what a killed save_model into {path} left ({describe(err)}): "
                     + ", ".join(str(folder) for _, folder, _ in leftovers))
    for folder in live:
        notes.append(f"{folder} belongs to a save_model into {path} that is running (or ran on another host); "
                     "left as it is")
    for folder in _legacy_staging(path):
        notes.append(f"{folder} looks like what an older jaxnets' save_model into {path} left when it was killed; "
                     f"if no save is running, look inside and remove it: rm -r '{folder}'")
    for note in notes:
        warnings.warn(note, InterruptedSaveWarning, stacklevel=3)
    return notes



def variables_mismatch(expected: Any, given: Any, name: str) -> str | None:
    """What differs between `given` and `expected` (pytrees of arrays or shape/dtype structs), or None.

    The first missing or unexpected variable, then the first other shape,
    then the first other dtype (saying that it is the dtype, and how to cast).
    """
    def leaves(tree):
        return {jax.tree_util.keystr(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}

    try:
        want, got = leaves(expected), leaves(jax.tree.map(lambda a: a, dict(given)))
    except (TypeError, ValueError) as err:
        return f"not a dict of arrays ({describe(err)})"
    missing = [k for k in want if k not in got]
    extra = [k for k in got if k not in want]
    if missing or extra:
        first = f"{missing[0]} is missing" if missing else f"{extra[0]} is not a variable of {name}"
        return f"wrong keys: {first} ({len(missing)} missing, {len(extra)} unexpected in all)"
    for key, leaf in want.items():
        if tuple(np.shape(got[key])) != tuple(leaf.shape):
            return f"wrong shapes: {key} has shape {tuple(np.shape(got[key]))}, {name} needs {tuple(leaf.shape)}"
    for key, leaf in want.items():
        dtype = jnp.asarray(got[key]).dtype if not hasattr(got[key], "dtype") else np.dtype(got[key].dtype)
        if dtype != leaf.dtype:
            return (f"wrong dtype: {key} is {dtype}, {name}'s variables are {np.dtype(leaf.dtype)} (a model's "
                    f"dtype= sets its computation, not its variables); cast them: "
                    f"jax.tree.map(lambda a: a.astype('{np.dtype(leaf.dtype)}'), variables)")
    return None




def check_variables(name: str, variables: Any, create_kwargs: dict | None = None):
    """`models.create(name, **create_kwargs)`, refusing `variables` that do not fit it.

    Args:
      name: a `jaxnets.models` name.
      variables: `{'params', ['batch_stats']}`: pytrees of arrays.
      create_kwargs: the arguments given to `models.create` (num_classes, ...).

    Returns:
      The created flax model.

    Raises:
      ValueError: unknown model or arguments, or "variables do not fit NAME
        with KWARGS: ..." saying whether keys, shapes or the dtype differ, and
        which variable.
    """
    create_kwargs = dict(create_kwargs or {})
    model = models.create(name, **create_kwargs)
    expected = jax.eval_shape(lambda: models.init(model, jax.random.key(0)))
    problem = variables_mismatch(expected, variables, name)
    if problem:
        raise ValueError(f"variables do not fit {name} with {create_kwargs}: {problem}")
    return model


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


def save_model(path: str | Path, name: str, variables: dict, overwrite: bool = False, *,
               contract: InputContract | None = None, dataset: str | None = None, **create_kwargs) -> Path:
    """`torch.save(model)`, the JAX way: architecture, variables and input contract in one folder.

    Args:
      path: folder to create.
      name: the `jaxnets.models` name the variables belong to.
      variables: `{'params', ['batch_stats']}`.
      overwrite: replace an existing model folder (one `save_model` wrote and
        `load_model` would read). Any other file or folder at `path` is never
        replaced.
      contract: the input contract (image shape, normalisation, class names)
        of the run that made the variables: `FitResult.contract`, or
        `InputContract.for_dataset(...)`. Stored in `model.json`; every export
        of the folder records it.
      dataset: shorthand for `contract=InputContract.for_dataset(dataset)`
        (normalised `'dataset'`, as `jaxnets-train` does by default).
      **create_kwargs: the arguments given to `models.create` (num_classes, ...).

    The folder holds `model.json` (name, arguments, contract, and the
    SHA-256 of the arrays that `load_model` checks) and `variables/` (orbax).
    It is written beside `path` and renamed into place; an existing model is
    moved aside until then, so a save killed midway is completed or rolled
    back by the next `save_model`/`load_model` (`recover_interrupted_save`).

    Raises:
      FileExistsError: `path` exists and `overwrite` is False, or it is not a
        model folder written by `save_model`.
      ValueError: the variables do not fit `models.create(name, **create_kwargs)`
        (the message says whether keys, shapes or the dtype differ, and which
        variable), or the contract does not fit the model.
    """
    path = expand_path(path).absolute()
    recover_interrupted_save(path)
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{path} already exists; choose another path or pass overwrite=True")
        if not _is_model_folder(path):
            raise FileExistsError(f"{path} exists and is not a model folder written by save_model (only model.json "
                                  "and variables/); overwrite=True replaces only those. Choose another path.")
    if dataset is not None:
        if contract is not None:
            raise ValueError("give contract= or dataset=, not both")
        contract = InputContract.for_dataset(dataset)
    model = check_variables(name, variables, create_kwargs)
    if contract is not None:
        contract.check_model(model, name)
    arrays = jax.tree.map(jnp.asarray, dict(variables))
    info = {"format": MODEL_FORMAT, "name": name, "kwargs": encode_kwargs(create_kwargs),
            "input_contract": None if contract is None else contract.to_json(),
            "checksum": {"algorithm": CHECKSUM_ALGORITHM, "value": arrays_checksum(arrays)}}
    path.parent.mkdir(parents=True, exist_ok=True)
    staging, old = _side_folder(path, _SAVING), _side_folder(path, _REPLACED)
    _SAVES_IN_PROGRESS.update((staging, old))
    moved_aside = False
    try:
        staging.mkdir()
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(staging / "variables", arrays)
        (staging / "model.json").write_text(json.dumps(info, indent=2))  # last: marks the folder complete
        if path.exists():
            os.replace(path, old)  # moved aside, not deleted, until the new folder is in place
            moved_aside = True
        os.replace(staging, path)
    except BaseException:
        if moved_aside and not path.exists():
            os.replace(old, path)  # put the old model back
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        _SAVES_IN_PROGRESS.difference_update((staging, old))
    shutil.rmtree(old, ignore_errors=True)
    for kind, folder, alive in _leftovers(path):  # a killed save's model, never moved into place: superseded now
        if kind == _SAVING and not alive:
            shutil.rmtree(folder, ignore_errors=True)
            warnings.warn(f"removed {folder}, a model a killed save_model never moved into place, superseded by "
                          "this save", InterruptedSaveWarning, stacklevel=2)
    return path


def _read_model_json(path: Path) -> dict:
    info = json.loads((path / "model.json").read_text())
    if not isinstance(info, dict) or info.get("format") != MODEL_FORMAT:
        raise ValueError(f"format {info.get('format') if isinstance(info, dict) else info!r}")
    return info


def read_contract(path: str | Path) -> InputContract | None:
    """The input contract stored in a `save_model` folder (None: saved without one).

    Raises:
      CheckpointError: not a model folder, or its contract is malformed.
    """
    path = expand_path(path).absolute()
    try:
        value = _read_model_json(path).get("input_contract")
        return None if value is None else InputContract.from_json(value)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a model saved by jaxnets.save_model ({describe(err)})") from err


def load_model(path: str | Path):
    """The inverse of `save_model`: `(model, variables)`, no user code needed. `read_contract` gives its contract.

    A save into `path` that was killed midway is first completed or rolled
    back (`recover_interrupted_save`, with an `InterruptedSaveWarning`).

    Raises:
      CheckpointError: not a jaxnets model folder, its `model.json` is malformed
        (any wrong type or value), or its variables are corrupt (unreadable, or
        their SHA-256 differs from the one saved with them).

    Warns:
      UnverifiedModelWarning: the folder has no checksum (saved by an older
        jaxnets): loaded, but its arrays could not be verified.
    """
    path = expand_path(path).absolute()
    recover_interrupted_save(path)
    try:
        info = _read_model_json(path)
        name, kwargs = info.get("name"), info.get("kwargs", {})
        if not isinstance(name, str) or not isinstance(kwargs, dict):
            raise ValueError("'name' must be a string and 'kwargs' an object")
        if info.get("input_contract") is not None:
            InputContract.from_json(info["input_contract"])
        model = models.create(name, **decode_kwargs(kwargs))
        target = abstract(jax.eval_shape(lambda: models.init(model, jax.random.key(0))))
    except Exception as err:  # malformed JSON values surface as many types (TypeError, ZeroDivisionError, ...)
        raise CheckpointError(f"{path} is not a model saved by jaxnets.save_model ({describe(err)})") from err
    failure = None
    with quiet_abandoned_reads():
        try:
            with quiet_orbax_logs(), ocp.StandardCheckpointer() as checkpointer:
                variables = checkpointer.restore(path / "variables", target)
        except Exception as err:  # orbax/tensorstore raise many types
            failure = describe(err)  # kept as text: the exception would keep the abandoned reads alive
    if failure is not None:
        raise CheckpointError(f"cannot restore {path / 'variables'}: corrupt or mismatched ({failure})")
    saved = info.get("checksum")
    if not isinstance(saved, dict) or saved.get("algorithm") != CHECKSUM_ALGORITHM:
        warnings.warn(f"{path} has no checksum of its arrays (saved by an older jaxnets), so they could not be "
                      "verified; save it again with save_model to add one", UnverifiedModelWarning, stacklevel=2)
    elif saved.get("value") != arrays_checksum(variables):
        raise CheckpointError(f"cannot load {path}: corrupt, its arrays do not match the checksum saved with them "
                              "(the files changed after they were written). Save or convert the model again")
    return model, variables
