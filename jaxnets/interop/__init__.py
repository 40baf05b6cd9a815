"""Convert weights between PyTorch `state_dict`s and jaxnets variables.

    >>> variables = from_torch("resnet18", torch_model.state_dict())
    >>> state_dict = to_torch("resnet18", variables)

Module names in jaxnets mirror PyTorch's (`layer1.0.conv1`, `features.3`),
so the mapping is key for key; what changes is the layout:

| PyTorch                         | jaxnets                               |
|---------------------------------|---------------------------------------|
| Conv2d `weight` [O, I, kh, kw]  | `kernel` [kh, kw, I, O]               |
| Linear `weight` [out, in]       | `kernel` [in, out]                    |
| Linear after a conv stack, whose input is an NCHW flatten | rows permuted from (C, H, W) to (H, W, C) order |
| BatchNorm `weight`, `bias`      | `scale`, `bias` (params)              |
| BatchNorm `running_mean/var`    | `mean`, `var` (batch_stats)           |
| BatchNorm `num_batches_tracked` | dropped (`to_torch` writes 0)         |

Torch itself is imported only by `to_torch` and `jaxnets.interop.torch_models`;
`from_torch` takes torch tensors or numpy arrays alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np

from jaxnets import models

_PARAM_TO_TORCH = {"kernel": "weight", "bias": "bias", "scale": "weight"}
_STAT_TO_TORCH = {"mean": "running_mean", "var": "running_var"}


class StateDictMismatch(ValueError):
    """A `state_dict` does not fit the requested architecture."""


def _leaves(tree: Mapping, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from _leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _torch_key(collection: str, path: tuple[str, ...]) -> str:
    table = _PARAM_TO_TORCH if collection == "params" else _STAT_TO_TORCH
    return ".".join(path[:-1] + (table[path[-1]],))


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _flatten_permutation(model, module: str, in_features: int) -> tuple[int, int, int] | None:
    """(C, H, W) of the NCHW feature map flattened into `module`, or None."""
    spec = getattr(model, "torch_flatten", None)
    if spec is None or spec[0] != module:
        return None
    channels = spec[1]
    side = math.isqrt(in_features // channels)
    if channels * side * side != in_features:
        raise StateDictMismatch(f"cannot infer the feature map flattened into {module!r}: {in_features} inputs")
    return channels, side, side


def _torch_to_flax(array: np.ndarray, leaf: str, flatten: tuple[int, int, int] | None) -> np.ndarray:
    if leaf == "kernel" and array.ndim == 4:
        return array.transpose(2, 3, 1, 0)
    if leaf == "kernel" and array.ndim == 2:
        if flatten is not None:
            out = array.shape[0]
            return array.reshape(out, *flatten).transpose(2, 3, 1, 0).reshape(-1, out)
        return array.T
    return array


def _flax_to_torch(array: np.ndarray, leaf: str, flatten: tuple[int, int, int] | None) -> np.ndarray:
    if leaf == "kernel" and array.ndim == 4:
        return array.transpose(3, 2, 0, 1)
    if leaf == "kernel" and array.ndim == 2:
        if flatten is not None:
            channels, height, width = flatten
            out = array.shape[1]
            return array.reshape(height, width, channels, out).transpose(3, 2, 0, 1).reshape(out, -1)
        return array.T
    return array


def _layout(model) -> list[tuple[str, tuple[str, ...], str, tuple[int, ...], Any]]:
    """Every variable as (collection, path, torch key, torch shape, flatten spec)."""
    shapes = jax.eval_shape(lambda: models.init(model, jax.random.key(0)))
    rows = []
    for collection in ("params", "batch_stats"):
        for path, leaf in _leaves(shapes.get(collection, {})):
            flatten = None
            if path[-1] == "kernel" and len(leaf.shape) == 2:
                flatten = _flatten_permutation(model, ".".join(path[:-1]), leaf.shape[0])
            dummy = np.empty(leaf.shape, np.int8)
            torch_shape = _flax_to_torch(dummy, path[-1], flatten).shape
            rows.append((collection, path, _torch_key(collection, path), torch_shape, flatten))
    return rows


def from_torch(name: str, state_dict: Mapping[str, Any], **create_kwargs) -> dict:
    """Flax variables for a PyTorch `state_dict` of the same architecture.

    Args:
      name: a `jaxnets.models.available()` name.
      state_dict: `torch_model.state_dict()` (torch tensors) or the same keys
        holding numpy arrays.
      **create_kwargs: passed to `jaxnets.models.create` (e.g. `num_classes`).

    Returns:
      `{'params': ..., 'batch_stats': ...}` of float32 numpy arrays, ready for
      `model.apply`.

    Raises:
      StateDictMismatch: naming the first missing, unexpected or mis-shaped key.
    """
    model = models.create(name, **create_kwargs)
    layout = _layout(model)
    expected = {row[2] for row in layout}
    bn_counters = {key.rsplit(".", 1)[0] + ".num_batches_tracked" for key in expected if key.endswith("running_mean")}
    for collection, path, key, torch_shape, _ in layout:
        if key not in state_dict:
            raise StateDictMismatch(f"{name}: state_dict is missing key {key!r} (expected shape {torch_shape})")
    unexpected = [k for k in state_dict if k not in expected and k not in bn_counters]
    if unexpected:
        raise StateDictMismatch(f"{name}: unexpected key {unexpected[0]!r} in state_dict ({len(unexpected)} in all)")
    wanted_shapes = {row[2]: tuple(row[3]) for row in layout}
    for key, value in state_dict.items():  # in the user's order, so "first" means first there
        if key in wanted_shapes and tuple(value.shape) != wanted_shapes[key]:
            raise StateDictMismatch(f"{name}: {key!r} has shape {tuple(value.shape)}, expected {wanted_shapes[key]}")
    variables: dict = {}
    for collection, path, key, torch_shape, flatten in layout:
        array = _to_numpy(state_dict[key])
        converted = _torch_to_flax(array.astype(np.float32), path[-1], flatten)
        _set(variables, (collection,) + path, np.ascontiguousarray(converted))
    return variables


def to_torch(name: str, variables: Mapping[str, Any], **create_kwargs) -> dict:
    """A PyTorch `state_dict` (ordered dict of torch tensors) for flax `variables`.

    The inverse of `from_torch`; load it with `torch_model.load_state_dict`.
    Requires torch.
    """
    import torch  # noqa: PLC0415 - torch is optional

    model = models.create(name, **create_kwargs)
    state_dict: dict = {}
    for collection, path, key, torch_shape, flatten in _layout(model):
        tree = variables[collection]
        for part in path:
            tree = tree[part]
        array = _flax_to_torch(np.asarray(tree, np.float32), path[-1], flatten)
        state_dict[key] = torch.from_numpy(np.array(array, copy=True))  # writable: JAX buffers are read-only
        if key.endswith("running_var"):
            state_dict[key.rsplit(".", 1)[0] + ".num_batches_tracked"] = torch.tensor(0)
    return state_dict


__all__ = ["StateDictMismatch", "from_torch", "to_torch"]
