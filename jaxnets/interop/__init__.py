"""Convert weights between PyTorch checkpoints and jaxnets variables.

    >>> variables = from_torch("resnet18", torch_model.state_dict())
    >>> variables = from_torch("lenet-cifar", "checkpoint.pth")    # a file
    >>> variables = from_torch("mlp", their_model)                  # an nn.Module
    >>> state_dict = to_torch("resnet18", variables)                # our key names
    >>> their_model.load_state_dict(to_torch("mlp", variables, like=their_model))

`from_torch` takes what a PyTorch user has: a `state_dict`, an `nn.Module`,
a checkpoint container holding one state_dict (under `state_dict`, `model`,
`net` or `model_state_dict`, beside entries such as `epoch` or `acc`), or the
path of a `.pt`/`.pth` file. Files are opened with
`torch.load(path, weights_only=True)`: a file that needs code execution to
load (a pickled Python object) is refused with `UnsafeCheckpoint`, never
run. Wrapper prefixes (`module.` from DataParallel/DDP, `_orig_mod.` from
`torch.compile`) are stripped.

Module names in jaxnets mirror PyTorch's (`layer1.0.conv1`, `features.3`),
so a state_dict of our reference classes maps key for key. A state_dict
with other names (say the texts' `self.net = nn.Sequential(...)`, keys
`net.0.weight`, `net.2.weight`, ...) is matched by structure instead: its
layers in state_dict order against ours in module order, by role (conv,
linear, BatchNorm) and shape; every tensor must be used exactly once, or
`StateDictMismatch` names the first pair that differs. The mapping used is
logged (logger `jaxnets.interop`, level INFO) and returned with
`return_mapping=True`. What changes is the layout::

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

import dataclasses
import functools
import logging
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxnets import models
from jaxnets.paths import expand_path

_PARAM_TO_TORCH = {"kernel": "weight", "bias": "bias", "scale": "weight"}
_STAT_TO_TORCH = {"mean": "running_mean", "var": "running_var"}


logger = logging.getLogger(__name__)

# Keys under which training scripts store the state_dict in a checkpoint dict.
CONTAINER_KEYS = ("state_dict", "model", "net", "model_state_dict")
# Prefixes added by wrappers: nn.DataParallel / DDP, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class TorchCheckpointError(ValueError):
    """A PyTorch checkpoint cannot be used: the base of every `from_torch` error."""


class StateDictMismatch(TorchCheckpointError):
    """A checkpoint is malformed or does not fit the requested architecture."""


class UnsafeCheckpoint(TorchCheckpointError):
    """A checkpoint file needs code execution to load; it was refused, not run."""


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
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            value = value.float()
        value = value.numpy()
    return np.asarray(value)


def _flatten_permutation(model, module: str, in_features: int) -> tuple[int, int, int] | None:
    """(C, H, W) of the NCHW feature map flattened into `module`, or None."""
    spec = models.catalog.family_of(model).torch_flatten(model)
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


@dataclasses.dataclass
class _Layer:
    """One of our layers: its module path, role (conv, linear, batchnorm) and layout rows."""

    module: str
    role: str = ""
    rows: list = dataclasses.field(default_factory=list)

    def describe(self) -> str:
        return f"{self.role} " + ", ".join(f"{key.rsplit('.', 1)[-1]} {shape}" for _, _, key, shape, _ in self.rows)


def _ordered_paths(model) -> tuple[list[tuple[str, tuple[str, ...]]], Any]:
    """(collection, path) of every variable in module-creation order, and the variables' shapes.

    `model.init` run eagerly keeps flax's insertion order; anything under
    `jax.jit` / `eval_shape` would sort the keys (`features.10` before
    `features.3`), so the order is recorded while tracing.
    """
    order: list[tuple[str, tuple[str, ...]]] = []

    def init():
        variables = model.init(jax.random.key(0), models.example_input(model), train=False)
        for collection in ("params", "batch_stats"):
            order.extend((collection, path) for path, _ in _leaves(variables.get(collection, {})))
        return variables

    shapes = jax.eval_shape(init)
    return order, shapes


def _layout(model) -> list[tuple[str, tuple[str, ...], str, tuple[int, ...], Any]]:
    """Every variable as (collection, path, torch key, torch shape, flatten spec), in module order."""
    try:
        return list(_cached_layout(model))
    except TypeError:  # an unhashable field value: compute it each time
        return _compute_layout(model)


@functools.lru_cache(maxsize=64)
def _cached_layout(model) -> tuple:
    # Tracing a ResNet-50's init takes seconds; the layout depends only on the
    # model's (frozen, hashable) configuration.
    return tuple(_compute_layout(model))


def _compute_layout(model) -> list[tuple[str, tuple[str, ...], str, tuple[int, ...], Any]]:
    order, shapes = _ordered_paths(model)
    rows = []
    for collection, path in order:
        leaf = shapes[collection]
        for part in path:
            leaf = leaf[part]
        flatten = None
        if path[-1] == "kernel" and len(leaf.shape) == 2:
            flatten = _flatten_permutation(model, ".".join(path[:-1]), leaf.shape[0])
        dummy = np.empty(leaf.shape, np.int8)
        torch_shape = tuple(_flax_to_torch(dummy, path[-1], flatten).shape)
        rows.append((collection, path, _torch_key(collection, path), torch_shape, flatten))
    return rows


def _our_layers(layout) -> list[_Layer]:
    """Our variables grouped per layer, layers in module order (BatchNorm stats with their layer)."""
    by_module: dict[str, _Layer] = {}
    for row in layout:
        collection, path, _, torch_shape, _ = row
        module = ".".join(path[:-1])
        if module not in by_module:
            by_module[module] = _Layer(module)
        by_module[module].rows.append(row)
    for layer in by_module.values():
        leaves = {row[1][-1] for row in layer.rows}
        kernel = [row[3] for row in layer.rows if row[1][-1] == "kernel"]
        layer.role = "batchnorm" if "mean" in leaves else "conv" if kernel and len(kernel[0]) == 4 else "linear"
        # PyTorch's order inside a layer: weight, bias, running_mean, running_var.
        rank = {"kernel": 0, "scale": 0, "bias": 1, "mean": 2, "var": 3}
        layer.rows.sort(key=lambda row: rank[row[1][-1]])
    return list(by_module.values())


def _their_layers(state_dict: Mapping[str, Any]) -> list[tuple[str, str, list[str]]]:
    """(module prefix, role, keys) per layer of a torch state_dict, in its order; counters dropped."""
    groups: dict[str, list[str]] = {}
    for key in state_dict:
        if key.endswith("num_batches_tracked"):
            continue
        module = key.rsplit(".", 1)[0] if "." in key else ""
        groups.setdefault(module, []).append(key)
    out = []
    for module, keys in groups.items():
        leaves = {key.rsplit(".", 1)[-1] for key in keys}
        weight = state_dict.get(f"{module}.weight" if module else "weight")
        ndim = len(weight.shape) if weight is not None else 0
        role = "batchnorm" if "running_mean" in leaves else "conv" if ndim == 4 else "linear" if ndim == 2 else "other"
        out.append((module, role, keys))
    return out


def _describe_theirs(state_dict, role: str, keys: list[str]) -> str:
    return f"{role} " + ", ".join(f"{key.rsplit('.', 1)[-1]} {tuple(state_dict[key].shape)}" for key in keys)


_TORCH_LEAF_ORDER = {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3}


def _match_by_structure(name: str, state_dict: Mapping[str, Any], layout) -> dict[str, str]:
    """{their key: our torch key}, pairing layers in order by role and shapes.

    Raises:
      StateDictMismatch: naming the first pair of layers that differ (both
        names and shapes), or the layers left over on either side.
    """
    ours = _our_layers(layout)
    theirs = _their_layers(state_dict)
    mapping: dict[str, str] = {}
    for index, (mine, (module, role, keys)) in enumerate(zip(ours, theirs)):
        keys = sorted(keys, key=lambda k: _TORCH_LEAF_ORDER.get(k.rsplit(".", 1)[-1], 9))
        their_leaves = [(k.rsplit(".", 1)[-1], tuple(state_dict[k].shape)) for k in keys]
        my_leaves = [(row[2].rsplit(".", 1)[-1], tuple(row[3])) for row in mine.rows]
        if role != mine.role or their_leaves != my_leaves:
            raise StateDictMismatch(
                f"{name}: the state_dict does not match by structure; first mismatch at layer {index}: "
                f"theirs {module!r} ({_describe_theirs(state_dict, role, keys)}) vs ours {mine.module!r} "
                f"({mine.describe()}). Is this checkpoint a {name}? (create options such as num_classes must "
                "match too)")
        mapping.update((key, row[2]) for key, row in zip(keys, mine.rows))
    if len(theirs) != len(ours):
        if len(theirs) > len(ours):
            module, role, keys = theirs[len(ours)]
            extra = f"theirs has {len(theirs) - len(ours)} more layer(s), the first {module!r} " \
                    f"({_describe_theirs(state_dict, role, keys)})"
        else:
            mine = ours[len(theirs)]
            extra = f"ours has {len(ours) - len(theirs)} more layer(s), the first {mine.module!r} ({mine.describe()})"
        raise StateDictMismatch(f"{name}: the state_dict does not match by structure: {len(theirs)} layers in the "
                                f"state_dict, {len(ours)} in {name}; {extra}")
    return mapping


def _check_by_name(name: str, state_dict: Mapping[str, Any], layout) -> None:
    """Raise `StateDictMismatch` for the first missing, unexpected or mis-shaped key (our names)."""
    expected = {row[2] for row in layout}
    for collection, path, key, torch_shape, _ in layout:
        if key not in state_dict:
            raise StateDictMismatch(f"{name}: state_dict is missing key {key!r} (expected shape {torch_shape})")
    unexpected = [k for k in state_dict if k not in expected and not k.endswith("num_batches_tracked")]
    if unexpected:
        raise StateDictMismatch(f"{name}: unexpected key {unexpected[0]!r} in state_dict ({len(unexpected)} in all)")
    wanted_shapes = {row[2]: tuple(row[3]) for row in layout}
    for key, value in state_dict.items():  # in the user's order, so "first" means first there
        if key in wanted_shapes and tuple(value.shape) != wanted_shapes[key]:
            raise StateDictMismatch(f"{name}: {key!r} has shape {tuple(value.shape)}, expected {wanted_shapes[key]}")


def _load_file(path: Path) -> Any:
    """`torch.load(path, weights_only=True)`, its failures as our errors."""
    try:
        import torch  # noqa: PLC0415 - torch is optional
    except ImportError as err:
        raise ImportError("reading a .pt/.pth file needs PyTorch: pip install 'jaxnets[torch]'") from err
    import pickle  # noqa: PLC0415

    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL" not in str(err):  # garbage, not a refused Python object
            raise StateDictMismatch(f"{path} is not a readable PyTorch checkpoint ({str(err)[:300]})") from err
        first = str(err).strip().splitlines()
        detail = next((line for line in first if "GLOBAL" in line), first[0])
        raise UnsafeCheckpoint(
            f"{path} holds pickled Python objects that would run code when loaded, so it was refused and nothing "
            f"in it was executed ({detail.strip()[:300]}). A whole model saved with torch.save(model) is such a "
            "file: save model.state_dict() instead, or, only if you trust the file, load it yourself with "
            "torch.load(path, weights_only=False) and pass the model or its state_dict()") from err
    except Exception as err:  # zip/pickle corruption surfaces as many types
        raise StateDictMismatch(f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: "
                                f"{str(err).splitlines()[0][:300] if str(err) else ''})") from err


def _is_tensor(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, (str, bytes))


def _unwrap(source: Any, where: str = "checkpoint") -> dict[str, Any]:
    """A flat {key: tensor} from a state_dict, an nn.Module, a container or a path."""
    if isinstance(source, (str, os.PathLike)):
        path = expand_path(source)
        return _unwrap(_load_file(path), where=str(path))
    if not isinstance(source, Mapping) and callable(getattr(source, "state_dict", None)):  # an nn.Module
        return _unwrap(source.state_dict(), where=type(source).__name__)
    if not isinstance(source, Mapping):
        raise StateDictMismatch(
            f"expected a state_dict, an nn.Module, a checkpoint dict or a .pt/.pth path; got {type(source).__name__}")
    if not source:
        raise StateDictMismatch(f"the {where} is empty: no tensors to convert")
    if all(_is_tensor(v) for v in source.values()):
        bad = [k for k in source if not isinstance(k, str)]
        if bad:
            raise StateDictMismatch(f"state_dict keys must be strings; got {bad[0]!r}")
        return dict(source)
    found = [k for k in CONTAINER_KEYS if k in source and (isinstance(source[k], Mapping)
                                                           or callable(getattr(source[k], "state_dict", None)))]
    if found:
        return _unwrap(source[found[0]], where=f"{where}[{found[0]!r}]")
    keys = ", ".join(repr(k) for k in list(source)[:20])
    raise StateDictMismatch(
        f"the {where} is neither a state_dict (not every value is a tensor) nor a checkpoint dict holding one "
        f"under {', '.join(repr(k) for k in CONTAINER_KEYS)}; keys found: {keys}. Pass the state_dict itself, "
        "e.g. from_torch(name, checkpoint['your_key'])")


def _strip_wrappers(keys: list[str]) -> dict[str, str]:
    """{original key: key without the wrapper prefixes every key shares}."""
    stripped = {key: key for key in keys}
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if stripped and all(k.startswith(prefix) for k in stripped.values()):
                stripped = {orig: k[len(prefix):] for orig, k in stripped.items()}
                changed = True
    return stripped


def load_state_dict(source: Any) -> dict[str, Any]:
    """The state_dict inside `source`, wrapper prefixes stripped.

    Args:
      source: a state_dict (torch tensors or numpy arrays), an `nn.Module`,
        a checkpoint dict holding one under `state_dict`, `model`, `net` or
        `model_state_dict`, or a `.pt`/`.pth` path (`torch.load(...,
        weights_only=True)`).

    Returns:
      `{key: tensor}` in the source's order, without `module.`/`_orig_mod.`.

    Raises:
      UnsafeCheckpoint: the file needs code execution to load (not run).
      StateDictMismatch: anything else that holds no usable state_dict.
      FileNotFoundError: the path does not exist.
    """
    state_dict = _unwrap(source)
    return {new: state_dict[old] for old, new in _strip_wrappers(list(state_dict)).items()}


def match_state_dict(name: str, source: Any, **create_kwargs) -> dict[str, str]:
    """How `from_torch` reads `source`: `{their key: our key}` (our keys are PyTorch-style).

    Keys already ours map to themselves; other names are matched by
    structure (see the module docstring). Counters (`num_batches_tracked`)
    are left out. Raises as `from_torch`.
    """
    state_dict = load_state_dict(source)
    _, mapping = _resolve(name, state_dict, create_kwargs)
    return mapping


def _resolve(name: str, state_dict: dict[str, Any], create_kwargs: dict):
    """(layout, {their key: our key}) for a prefix-stripped state_dict."""
    model = models.create(name, **create_kwargs)
    layout = _layout(model)
    for key, value in state_dict.items():
        if not _is_tensor(value):
            raise StateDictMismatch(f"{name}: state_dict value {key!r} is a {type(value).__name__}, not a tensor")
    ours = {row[2] for row in layout}
    theirs = {k for k in state_dict if not k.endswith("num_batches_tracked")}
    if theirs == ours:
        _check_by_name(name, state_dict, layout)
        return layout, {key: key for key in state_dict if key in ours}
    try:
        mapping = _match_by_structure(name, state_dict, layout)
    except StateDictMismatch:
        if len(theirs & ours) * 2 >= len(theirs):  # mostly our names: say which key is off
            _check_by_name(name, state_dict, layout)
        raise
    logger.info("%s: matched %d tensors by structure: %s", name, len(mapping),
                ", ".join(f"{a} -> {b}" for a, b in mapping.items()))
    return layout, mapping


def from_torch(name: str, source: Any, *, return_mapping: bool = False, **create_kwargs):
    """Flax variables for a PyTorch checkpoint of the same architecture.

    Args:
      name: a `jaxnets.models.available()` name.
      source: a `state_dict` (torch tensors or numpy arrays), an `nn.Module`,
        a checkpoint dict holding a state_dict (`state_dict`, `model`, `net`
        or `model_state_dict`), or a `.pt`/`.pth` path, read with
        `torch.load(..., weights_only=True)`. `module.`/`_orig_mod.`
        prefixes are stripped; names other than ours are matched by
        structure.
      return_mapping: also return `{their key: our key}`.
      **create_kwargs: passed to `jaxnets.models.create` (e.g. `num_classes`).

    Returns:
      `{'params': ..., 'batch_stats': ...}` of float32 numpy arrays, ready for
      `model.apply` (and the mapping when `return_mapping`).

    Raises:
      StateDictMismatch: the source holds no state_dict, or one that does not
        fit: the message names the first missing, unexpected or mis-shaped
        key, or, for other names, the first pair of layers that differ.
      UnsafeCheckpoint: a file that needs code execution to load (refused,
        never run).
      FileNotFoundError: `source` is a path that does not exist.
      ValueError: `name` or `create_kwargs` are not a model (from `models.create`).
    """
    state_dict = load_state_dict(source)
    layout, mapping = _resolve(name, state_dict, create_kwargs)
    by_ours = {ours: theirs for theirs, ours in mapping.items()}
    variables: dict = {}
    for collection, path, key, torch_shape, flatten in layout:
        array = _to_numpy(state_dict[by_ours[key]])
        converted = _torch_to_flax(array.astype(np.float32), path[-1], flatten)
        _set(variables, (collection,) + path, np.ascontiguousarray(converted))
    return (variables, mapping) if return_mapping else variables


def to_torch(name: str, variables: Mapping[str, Any], *, like: Any = None, **create_kwargs) -> dict:
    """A PyTorch `state_dict` (ordered dict of torch tensors) for flax `variables`.

    The inverse of `from_torch`; load it with `torch_model.load_state_dict`.
    Requires torch.

    Args:
      name: a `jaxnets.models.available()` name.
      variables: `{'params', ['batch_stats']}` of that model.
      like: optional: the user's own model or state_dict (anything
        `from_torch` accepts). The result then has exactly its keys (prefixes
        such as `module.` included), order and dtypes, so
        `their_model.load_state_dict(result, strict=True)` works. Without
        it, keys are ours (`jaxnets.interop.torch_models`).
      **create_kwargs: passed to `jaxnets.models.create`.

    Raises:
      StateDictMismatch: `like` does not match the architecture.
    """
    import torch  # noqa: PLC0415 - torch is optional

    model = models.create(name, **create_kwargs)
    layout = _layout(model)
    ours: dict = {}
    rows = [row for layer in _our_layers(layout) for row in layer.rows]  # PyTorch's order
    for collection, path, key, torch_shape, flatten in rows:
        tree = variables[collection]
        for part in path:
            tree = tree[part]
        array = _flax_to_torch(np.asarray(tree, np.float32), path[-1], flatten)
        ours[key] = torch.from_numpy(np.array(array, copy=True))  # writable: JAX buffers are read-only
        if key.endswith("running_var"):
            ours[key.rsplit(".", 1)[0] + ".num_batches_tracked"] = torch.tensor(0)
    if like is None:
        return ours
    target = _unwrap(like)
    stripped = _strip_wrappers(list(target))
    _, mapping = _resolve(name, {new: target[old] for old, new in stripped.items()}, create_kwargs)
    state_dict: dict = {}
    for original, key in stripped.items():
        reference = target[original]
        if key.endswith("num_batches_tracked"):
            value = torch.zeros_like(torch.as_tensor(reference))
        else:
            value = ours[mapping[key]]
            if hasattr(reference, "dtype") and isinstance(reference, torch.Tensor):
                value = value.to(reference.dtype)
        state_dict[original] = value
    return state_dict


def convert(checkpoint: Any, output: str | os.PathLike, name: str, *, overwrite: bool = False,
            **create_kwargs) -> tuple[Path, dict[str, str]]:
    """A PyTorch checkpoint -> a `jaxnets.training.save_model` folder (`jaxnets-convert`).

    Args:
      checkpoint: anything `from_torch` accepts (usually a `.pth` path).
      output: the folder to write.
      name: the `jaxnets.models` name.
      overwrite: replace an existing `output` (see `save_model`).
      **create_kwargs: `models.create` arguments, stored with the model.

    Returns:
      (the folder written, `{their key: our key}`).

    Raises:
      TorchCheckpointError: as `from_torch`.
      FileExistsError: `output` exists.
    """
    from jaxnets.training.checkpoint import save_model  # noqa: PLC0415 - keeps interop light

    variables, mapping = from_torch(name, checkpoint, return_mapping=True, **create_kwargs)
    path = save_model(output, name, variables, overwrite=overwrite, **create_kwargs)
    return path, mapping


__all__ = [
    "CONTAINER_KEYS", "StateDictMismatch", "TorchCheckpointError", "UnsafeCheckpoint", "convert", "from_torch",
    "load_state_dict", "match_state_dict", "to_torch",
]
