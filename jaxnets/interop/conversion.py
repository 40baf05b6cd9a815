"""The three entry points: `from_torch`, `to_torch` and `convert` (a checkpoint into a `save_model` folder)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxnets.interop.layout import LayoutRow, build_layout, flax_to_torch, our_layers, set_leaf, torch_to_flax
from jaxnets.interop.matching import resolve
from jaxnets.interop.state_dict import (
    check_finite,
    check_tensors_have_data,
    find_module,
    load_state_dict,
    strip_wrappers,
    to_numpy,
    unwrap,
)


def from_torch(name: str, source: Any, *, mapping: Mapping[str, str] | None = None, return_mapping: bool = False,
               **create_kwargs):
    """Flax variables for a PyTorch checkpoint of the same architecture.

    Args:
      name: a `jaxnets.models.available()` name.
      source: a `state_dict` (torch tensors or numpy arrays), an `nn.Module`,
        a checkpoint dict holding a state_dict (`state_dict`, `model`, `net`
        or `model_state_dict`), or a `.pt`/`.pth` path, read with
        `torch.load(..., weights_only=True)`. `module.`/`_orig_mod.`
        prefixes are stripped; names other than ours are matched by
        structure, in the order an `nn.Module`'s forward calls its layers
        (traced), or in stored order for a state_dict.
      mapping: `{their module or key: our module or key}` (e.g.
        `{'fc2': 'hidden.1'}`) pinning layers by hand; the rest are matched
        by structure. Needed when a state_dict alone is ambiguous.
      return_mapping: also return `{their key: our key}`.
      **create_kwargs: passed to `jaxnets.models.create` (e.g. `num_classes`).

    Returns:
      `{'params': ..., 'batch_stats': ...}` of float32 numpy arrays, ready for
      `model.apply` (and the mapping when `return_mapping`).

    Raises:
      StateDictMismatch: the source holds no state_dict, or one that does not
        fit: the message names the first missing, unexpected or mis-shaped
        key, or, for other names, the first pair of layers that differ; or
        tensors on the meta device (no values).
      AmbiguousMapping: a state_dict whose same-shaped layers are stored in
        one order and numbered in another (pass the module or `mapping`).
      NonFiniteWeights: a tensor holds NaN or Inf (all such are named).
      UnsafeCheckpoint: a file that needs code execution to load (refused,
        never run).
      FileNotFoundError: `source` is a path that does not exist.
      ValueError: `name` or `create_kwargs` are not a model (from `models.create`),
        or an option has the wrong type or a value the model cannot be built with.
    """
    state_dict = load_state_dict(source)
    check_tensors_have_data(name, state_dict)
    layout, mapping = resolve(name, state_dict, create_kwargs, mapping, find_module(source))
    by_ours = {ours: theirs for theirs, ours in mapping.items()}
    variables: dict = {}
    for row in layout:
        array = to_numpy(state_dict[by_ours[row.torch_key]])
        converted = torch_to_flax(array.astype(np.float32), row.leaf, row.flatten)
        set_leaf(variables, (row.collection,) + row.path, np.ascontiguousarray(converted))
    check_finite(name, variables, by_ours, layout)
    return (variables, mapping) if return_mapping else variables


def _check_variables_fit(name: str, variables: Any, layout: list[LayoutRow], create_kwargs: dict) -> None:
    """Raise `ValueError` naming the first variable of `name` missing from `variables`, or mis-shaped."""
    if not isinstance(variables, Mapping):
        raise ValueError(f"to_torch({name!r}, ...): variables must be a dict {{'params': ..., ['batch_stats']}}; "
                         f"got {type(variables).__name__}")
    options = f" with {create_kwargs}" if create_kwargs else ""
    for row in layout:
        tree = variables.get(row.collection)
        for part in row.path:
            tree = tree.get(part) if isinstance(tree, Mapping) else None
        where = "/".join((row.collection,) + row.path)
        if tree is None:
            raise ValueError(f"variables do not fit {name}{options}: {where} is missing. Are they another "
                             "model's? (to_torch takes the name and options the variables were created with)")
        wanted = row.flax_shape()
        if tuple(np.shape(tree)) != tuple(wanted):
            raise ValueError(f"variables do not fit {name}{options}: {where} has shape {tuple(np.shape(tree))}, "
                             f"{name} needs {tuple(wanted)}. Are they another model's?")


def to_torch(name: str, variables: Mapping[str, Any], *, like: Any = None, mapping: Mapping[str, str] | None = None,
             **create_kwargs) -> dict:
    """A PyTorch `state_dict` (ordered dict of torch tensors) for flax `variables`.

    The inverse of `from_torch`; load it with `torch_model.load_state_dict`.
    Requires torch.

    Args:
      name: a `jaxnets.models.available()` name.
      variables: `{'params', ['batch_stats']}` of that model.
      like: optional: the user's own model or state_dict (anything
        `from_torch` accepts). The result then has exactly its keys (prefixes
        such as `module.` included), order and dtypes, so
        `their_model.load_state_dict(result, strict=True)` works. Layers are
        paired as `from_torch` pairs them (a module's call order; an
        ambiguous state_dict is refused). Without it, keys are ours
        (`jaxnets.interop.torch_models`).
      mapping: with `like`: layers pinned by hand, as in `from_torch`.
      **create_kwargs: passed to `jaxnets.models.create`.

    Raises:
      StateDictMismatch: `like` does not match the architecture.
      AmbiguousMapping: `like` is a state_dict whose layer order is ambiguous.
      ValueError: `variables` do not fit the model (naming the first variable missing or mis-shaped).
    """
    import torch  # torch is optional

    _, layout = build_layout(name, create_kwargs)
    _check_variables_fit(name, variables, layout, create_kwargs)
    ours: dict = {}
    rows = [row for layer in our_layers(layout) for row in layer.rows]  # PyTorch's order
    for row in rows:
        array = flax_to_torch(np.asarray(row.lookup(variables), np.float32), row.leaf, row.flatten)
        ours[row.torch_key] = torch.from_numpy(np.array(array, copy=True))  # writable: JAX buffers are read-only
        if row.torch_leaf == "running_var":
            ours[row.module + ".num_batches_tracked"] = torch.tensor(0)
    if like is None:
        return ours
    target = unwrap(like)
    stripped = strip_wrappers(list(target))
    _, pairs = resolve(name, {new: target[old] for old, new in stripped.items()}, create_kwargs, mapping,
                        find_module(like))
    state_dict: dict = {}
    for original, key in stripped.items():
        reference = target[original]
        if key.endswith("num_batches_tracked"):
            value = torch.zeros(tuple(reference.shape), dtype=getattr(reference, "dtype", torch.int64)) \
                if isinstance(reference, torch.Tensor) else torch.zeros_like(torch.as_tensor(reference))
        else:
            value = ours[pairs[key]]
            if isinstance(reference, torch.Tensor):
                value = value.to(reference.dtype)
        state_dict[original] = value
    return state_dict


def convert(checkpoint: Any, output: str | os.PathLike, name: str, *, overwrite: bool = False,
            mapping: Mapping[str, str] | None = None, contract: Any = None,
            **create_kwargs) -> tuple[Path, dict[str, str]]:
    """A PyTorch checkpoint -> a `jaxnets.training.save_model` folder (`jaxnets-convert`).

    Args:
      checkpoint: anything `from_torch` accepts (usually a `.pth` path).
      output: the folder to write.
      name: the `jaxnets.models` name.
      overwrite: replace an existing `output` (see `save_model`).
      mapping: layers pinned by hand (see `from_torch`).
      contract: the input contract to store with the model (a
        `jaxnets.contract.InputContract`, e.g. `InputContract.for_dataset('cifar10')`).
      **create_kwargs: `models.create` arguments, stored with the model.

    Returns:
      (the folder written, `{their key: our key}`).

    Raises:
      TorchCheckpointError: as `from_torch`.
      FileExistsError: `output` exists.
    """
    from jaxnets.models.saving import save_model  # keeps interop light (orbax loads on use)

    variables, pairs = from_torch(name, checkpoint, mapping=mapping, return_mapping=True, **create_kwargs)
    path = save_model(output, name, variables, overwrite=overwrite, contract=contract, **create_kwargs)
    return path, pairs
