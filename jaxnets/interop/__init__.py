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
layers in the order they run against ours in module order, by role (conv,
linear, BatchNorm) and shape; every tensor must be used exactly once, or
`StateDictMismatch` names the first pair that differs. The order they run:

  * given an `nn.Module`, its forward is traced once (forward pre-hooks, on
    zeros of the jaxnets model's input shape, in eval mode, no gradients), so
    a module that registers `fc1, fc3, fc2` but calls `fc1 -> fc2 -> fc3`
    converts right;
  * given only a state_dict (or a file), its order is the order the layers
    were registered in, which is usually, not always, the order they run.
    When two layers of the same role and shapes are stored in one order but
    numbered the other way (`fc3` before `fc2`), either order fits and the
    state_dict cannot say which is right: `AmbiguousMapping` names them and
    asks for the module or an explicit `mapping=` (`jaxnets-convert --map`).
    Names that carry no numbering are taken in stored order.

`mapping={'fc2': 'hidden.1', 'fc3': 'hidden.2'}` (their module or tensor key ->
ours) pins layers by hand; the rest are matched by structure. The mapping
used is logged (logger `jaxnets.interop`, level INFO) and returned with
`return_mapping=True`. A tensor holding NaN or Inf is refused
(`NonFiniteWeights`, naming it), as are tensors with no data (the `meta`
device). What changes is the layout::

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
import itertools
import logging
import math
import os
import re
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


class AmbiguousMapping(StateDictMismatch):
    """A state_dict alone cannot say in which order two same-shaped layers run: pass the module or `mapping=`."""


class NonFiniteWeights(TorchCheckpointError):
    """A checkpoint holds NaN or Inf values."""


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


def _is_meta(value: Any) -> bool:
    """A torch tensor with no data (built under `torch.device('meta')`)."""
    return bool(getattr(value, "is_meta", False))


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


def _numbering(module: str) -> tuple[str, tuple[int, ...]]:
    """`('fc#', (3,))` for `'fc3'`: a name's skeleton and the numbers in it (which order layers of one skeleton)."""
    return re.sub(r"\d+", "#", module), tuple(int(n) for n in re.findall(r"\d+", module))


def _pinned_pairs(name: str, state_dict, theirs, ours: list[_Layer], mapping: Mapping[str, str]) -> dict[str, str]:
    """`mapping` (their module or tensor key -> ours) as {their module: our module}, each name checked.

    Raises:
      StateDictMismatch: a name that is no layer on its side, a layer mapped twice, or a tensor mapped to
        another kind of tensor (a weight to a bias).
    """
    their_modules = [module for module, _, _ in theirs]
    our_modules = [layer.module for layer in ours]
    pairs: dict[str, str] = {}
    for their_name, our_name in mapping.items():
        their_name, our_name = str(their_name), str(our_name)
        if their_name not in their_modules and their_name in state_dict and "." in their_name:  # a tensor key
            their_name, their_leaf = their_name.rsplit(".", 1)
            our_name, _, our_leaf = our_name.rpartition(".")
            if our_leaf != their_leaf:
                raise StateDictMismatch(f"{name}: mapping {their_name}.{their_leaf!s} -> {our_name}.{our_leaf}: "
                                        f"a {their_leaf} maps to a {their_leaf} (or map the layers: "
                                        f"{{{their_name!r}: ...}})")
        if their_name not in their_modules:
            raise StateDictMismatch(f"{name}: mapping names {their_name!r}, which is no layer of the state_dict "
                                    f"(its layers: {', '.join(their_modules)})")
        if our_name not in our_modules:
            raise StateDictMismatch(f"{name}: mapping maps {their_name!r} to {our_name!r}, which is no layer of "
                                    f"{name} (its layers: {', '.join(our_modules)})")
        if pairs.get(their_name, our_name) != our_name:
            raise StateDictMismatch(f"{name}: mapping maps {their_name!r} twice ({pairs[their_name]!r} and "
                                    f"{our_name!r})")
        pairs[their_name] = our_name
    taken = list(pairs.values())
    twice = next((our for our in taken if taken.count(our) > 1), None)
    if twice is not None:
        raise StateDictMismatch(f"{name}: mapping maps two layers to {twice!r}: "
                                f"{', '.join(t for t, o in pairs.items() if o == twice)}")
    return pairs


def _pair(name: str, state_dict, their_layer, mine: _Layer, where: str) -> dict[str, str]:
    """{their key: our key} for one pair of layers, or `StateDictMismatch` saying how they differ."""
    module, role, keys = their_layer
    keys = sorted(keys, key=lambda k: _TORCH_LEAF_ORDER.get(k.rsplit(".", 1)[-1], 9))
    their_leaves = [(k.rsplit(".", 1)[-1], tuple(state_dict[k].shape)) for k in keys]
    my_leaves = [(row[2].rsplit(".", 1)[-1], tuple(row[3])) for row in mine.rows]
    if role != mine.role or their_leaves != my_leaves:
        raise StateDictMismatch(
            f"{name}: the state_dict does not match by structure; {where}: "
            f"theirs {module!r} ({_describe_theirs(state_dict, role, keys)}) vs ours {mine.module!r} "
            f"({mine.describe()}). Is this checkpoint a {name}? (create options such as num_classes must "
            "match too)")
    return {key: row[2] for key, row in zip(keys, mine.rows)}


def _check_unambiguous(name: str, state_dict, pairs: list[tuple[tuple, _Layer]], why_untraced: str) -> None:
    """Refuse when two same-shaped layers are stored in one order but numbered the other way.

    Either order fits the architecture, and a state_dict records only the
    order the layers were registered in, not the order they run.

    Raises:
      AmbiguousMapping: naming both layers, the two pairings, and how to say which is right.
    """
    groups: dict[tuple, list[tuple[str, str]]] = {}
    for (module, role, keys), mine in pairs:
        shapes = tuple(sorted((k.rsplit(".", 1)[-1], tuple(state_dict[k].shape)) for k in keys))
        groups.setdefault((role, shapes), []).append((module, mine.module))
    for members in groups.values():
        for (first, ours_first), (second, ours_second) in itertools.combinations(members, 2):
            (skeleton_a, numbers_a), (skeleton_b, numbers_b) = _numbering(first), _numbering(second)
            if skeleton_a != skeleton_b or numbers_a <= numbers_b:
                continue
            keys = next(keys for (module, _, keys), _ in pairs if module == first)
            role = next(role for (module, role, _), _ in pairs if module == first)
            raise AmbiguousMapping(
                f"{name}: the state_dict alone cannot say in which order its layers run: {first!r} and "
                f"{second!r} (both {_describe_theirs(state_dict, role, keys)}) are stored in the order {first}, "
                f"{second} but numbered {second}, {first}, and either order fits {name}. Stored order would give "
                f"{first} -> {ours_first}, {second} -> {ours_second}; numbered order {second} -> {ours_first}, "
                f"{first} -> {ours_second}.{why_untraced} Pass the nn.Module itself (its forward is traced to find "
                f"the order), or say which is which: mapping={{{second!r}: {ours_first!r}, {first!r}: "
                f"{ours_second!r}}} (jaxnets-convert --map {second}={ours_first} --map {first}={ours_second})")


def _match_by_structure(name: str, state_dict: Mapping[str, Any], layout, mapping: Mapping[str, str] | None = None,
                        order_known: bool = False, why_untraced: str = "") -> dict[str, str]:
    """{their key: our key}, pairing layers in order by role and shapes (`mapping`'s pairs pinned first).

    Args:
      state_dict: theirs, in the order its layers run when `order_known`
        (traced from the module), else in stored order.
      mapping: {their module or key: our module or key} to pin by hand.
      order_known: the order is the call order: no ambiguity check.
      why_untraced: said in an `AmbiguousMapping` message (why the module could not be traced).

    Raises:
      StateDictMismatch: naming the first pair of layers that differ (both
        names and shapes), or the layers left over on either side.
      AmbiguousMapping: see `_check_unambiguous`.
    """
    ours = _our_layers(layout)
    theirs = _their_layers(state_dict)
    pinned = _pinned_pairs(name, state_dict, theirs, ours, mapping or {})
    by_module = {layer.module: layer for layer in ours}
    result: dict[str, str] = {}
    for layer in theirs:
        if layer[0] in pinned:
            result.update(_pair(name, state_dict, layer, by_module[pinned[layer[0]]],
                                f"mapping {layer[0]!r} -> {pinned[layer[0]]!r}"))
    ours = [layer for layer in ours if layer.module not in set(pinned.values())]
    theirs = [layer for layer in theirs if layer[0] not in pinned]
    for index, (mine, layer) in enumerate(zip(ours, theirs)):
        result.update(_pair(name, state_dict, layer, mine, f"first mismatch at layer {index}"))
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
    if not order_known:
        _check_unambiguous(name, state_dict, list(zip(theirs, ours)), why_untraced)
    return {key: result[key] for key in state_dict if key in result}  # in the state_dict's order


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


def match_state_dict(name: str, source: Any, *, mapping: Mapping[str, str] | None = None,
                     **create_kwargs) -> dict[str, str]:
    """How `from_torch` reads `source`: `{their key: our key}` (our keys are PyTorch-style).

    Keys already ours map to themselves; other names are matched by
    structure (see the module docstring), `mapping`'s pairs pinned first.
    Counters (`num_batches_tracked`) are left out. Raises as `from_torch`.
    """
    state_dict = load_state_dict(source)
    _, mapping = _resolve(name, state_dict, create_kwargs, mapping, _find_module(source))
    return mapping


def _find_module(source: Any) -> Any:
    """The `nn.Module` in `source` (itself, or a checkpoint dict's entry), or None (a state_dict or a path)."""
    if hasattr(source, "register_forward_pre_hook") and hasattr(source, "named_modules"):
        return source
    if isinstance(source, Mapping) and not all(_is_tensor(v) for v in source.values()):
        for key in CONTAINER_KEYS:
            if key in source and not isinstance(source[key], Mapping):
                return _find_module(source[key])
    return None


def _call_order(module: Any, model) -> tuple[list[str] | None, str]:
    """The names of `module`'s layers holding tensors, in the order its forward calls them.

    One forward (eval mode, no gradients, each submodule's train/eval flag put
    back after) on zeros of the jaxnets model's input shape (`[1, C, H, W]`,
    or `[1, D]` for a flat input), with a pre-hook on every layer that owns
    parameters or buffers. Names are the module's own (`named_modules`), so
    they prefix its `state_dict()` keys.

    Returns:
      (the names, "") or, when the order cannot be known, (None, why): the
      forward failed, or some layers were not called as modules (weights
      used through `torch.nn.functional`).
    """
    import torch  # noqa: PLC0415 - a module was given, so torch is there

    def owns_tensors(layer) -> bool:
        return next(itertools.chain(layer.parameters(recurse=False), layer.buffers(recurse=False)), None) is not None

    holders = [(layer_name, layer) for layer_name, layer in module.named_modules() if owns_tensors(layer)]
    if not holders:
        return None, " (the module holds no tensors)"
    names = {id(layer): layer_name for layer_name, layer in holders}
    called: list[str] = []

    def record(layer, args):
        if names[id(layer)] not in called:
            called.append(names[id(layer)])

    reference = next(itertools.chain(module.parameters(), module.buffers()))
    dtype = reference.dtype if reference.is_floating_point() else torch.float32
    shape = tuple(model.input_shape)
    shape = (shape[2], shape[0], shape[1]) if len(shape) == 3 else shape  # NHWC -> NCHW
    hooks = [layer.register_forward_pre_hook(record) for _, layer in holders]
    modes = [(layer, layer.training) for layer in module.modules()]
    runner = getattr(module, "_orig_mod", module)  # torch.compile's wrapper: trace the module itself
    try:
        module.eval()
        with torch.no_grad():
            runner(torch.zeros((1, *shape), dtype=dtype, device=reference.device))
    except Exception as err:  # whatever the user's forward raises
        text = str(err).strip().splitlines()
        return None, (f" (its forward could not be traced on a [1, {', '.join(map(str, shape))}] input: "
                      f"{type(err).__name__}: {text[0][:200] if text else ''})")
    finally:
        for hook in hooks:
            hook.remove()
        for layer, training in modes:
            layer.training = training
    missed = [layer_name for layer_name, _ in holders if layer_name not in called]
    if missed:
        return None, (f" (tracing its forward did not see {', '.join(repr(m) for m in missed[:5])} called as a "
                      "module)")
    return called, ""


def _in_call_order(state_dict: dict[str, Any], module: Any, model) -> tuple[dict[str, Any], bool, str]:
    """`state_dict` (wrapper prefixes stripped) reordered as `module`'s forward calls its layers.

    Returns:
      (the state_dict, whether its order is the call order, why not).
    """
    if module is None:
        return state_dict, False, ""
    order, why = _call_order(module, model)
    if order is None:
        return state_dict, False, why
    raw = list(module.state_dict())
    stripped = _strip_wrappers(raw)
    cut = len(raw[0]) - len(stripped[raw[0]])  # the wrapper prefix (`module.`, `_orig_mod.`) every key shares
    rank = {layer_name[cut:]: index for index, layer_name in enumerate(order)}

    def position(item):
        index, key = item
        return rank.get(key.rsplit(".", 1)[0] if "." in key else "", len(rank)), index

    keys = [key for _, key in sorted(enumerate(state_dict), key=position)]
    return {key: state_dict[key] for key in keys}, True, ""


def _check_create_kwargs(name: str, model, create_kwargs: dict) -> None:
    """Refuse an option whose type differs from the model field's (`hidden_size='abc'`), or a negative size.

    Raises:
      ValueError: naming the option, its value and what it must be.
    """
    fields = getattr(model, "__dataclass_fields__", {})
    for key, value in create_kwargs.items():
        default = getattr(fields.get(key), "default", None)
        for kind, what in ((bool, "true or false"), (int, "an integer"), (float, "a number"), (str, "a string")):
            if type(default) is kind:
                fits = isinstance(value, kind) if kind in (bool, str) else \
                    isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
                if not fits:
                    raise ValueError(f"{name}: option {key} must be {what} (default {default!r}); got {value!r}")
                if kind is int and value < 0:
                    raise ValueError(f"{name}: option {key} must not be negative; got {value!r}")
                break


def _build_layout(name: str, create_kwargs: dict):
    """(model, layout) for `models.create(name, **create_kwargs)`; a model that cannot be built is one ValueError."""
    model = models.create(name, **create_kwargs)
    _check_create_kwargs(name, model, create_kwargs)
    try:
        return model, _layout(model)
    except Exception as err:  # e.g. hidden_size=0: the layers refuse their sizes (TypeError, ZeroDivisionError, ...)
        text = str(err).strip().splitlines()
        options = ", ".join(f"{k}={v!r}" for k, v in create_kwargs.items())
        raise ValueError(f"cannot build {name} with {options or 'its defaults'}: "
                         f"{type(err).__name__}: {text[0][:300] if text else ''}") from err


def _resolve(name: str, state_dict: dict[str, Any], create_kwargs: dict, mapping: Mapping[str, str] | None = None,
             module: Any = None):
    """(layout, {their key: our key}) for a prefix-stripped state_dict (`module`: the nn.Module it came from)."""
    model, layout = _build_layout(name, create_kwargs)
    for key, value in state_dict.items():
        if not _is_tensor(value):
            raise StateDictMismatch(f"{name}: state_dict value {key!r} is a {type(value).__name__}, not a tensor")
    ours = {row[2] for row in layout}
    theirs = {k for k in state_dict if not k.endswith("num_batches_tracked")}
    if theirs == ours and not mapping:
        _check_by_name(name, state_dict, layout)
        return layout, {key: key for key in state_dict if key in ours}
    ordered, order_known, why = _in_call_order(state_dict, module, model)
    try:
        matched = _match_by_structure(name, ordered, layout, mapping, order_known, why)
    except AmbiguousMapping:
        raise
    except StateDictMismatch:
        if not mapping and len(theirs & ours) * 2 >= len(theirs):  # mostly our names: say which key is off
            _check_by_name(name, state_dict, layout)
        raise
    matched = {key: matched[key] for key in state_dict if key in matched}  # in the source's order
    logger.info("%s: matched %d tensors by structure%s: %s", name, len(matched),
                " (layers in the order the module's forward calls them)" if order_known else "",
                ", ".join(f"{a} -> {b}" for a, b in matched.items()))
    return layout, matched


def _check_tensors_have_data(name: str, state_dict: Mapping[str, Any]) -> None:
    """Raise `StateDictMismatch` naming tensors on the meta device (shapes only, no values)."""
    meta = [key for key, value in state_dict.items() if _is_meta(value)]
    if meta:
        raise StateDictMismatch(
            f"{name}: {len(meta)} tensor(s) are on the 'meta' device and hold no values, e.g. {meta[0]!r}: the "
            "model was built under torch.device('meta') (or with init=False) and never loaded. Load its weights "
            "first (model.to_empty(device='cpu'), then model.load_state_dict(...)) and convert that")


def _check_finite(name: str, variables: dict, by_ours: dict[str, str], layout) -> None:
    """Raise `NonFiniteWeights` naming every tensor holding NaN or Inf (by the checkpoint's key)."""
    bad = []
    for collection, path, key, _, _ in layout:
        tree = variables[collection]
        for part in path:
            tree = tree[part]
        if not np.all(np.isfinite(tree)):
            count = int(np.size(tree) - np.count_nonzero(np.isfinite(tree)))
            bad.append(f"{by_ours[key]} ({count} of {np.size(tree)} values)")
    if bad:
        raise NonFiniteWeights(f"{name}: the checkpoint holds NaN or Inf values in {len(bad)} tensor(s): "
                               f"{', '.join(bad[:10])}{', ...' if len(bad) > 10 else ''}. Such weights give NaN "
                               "outputs; convert a checkpoint saved before training diverged")


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
    _check_tensors_have_data(name, state_dict)
    layout, mapping = _resolve(name, state_dict, create_kwargs, mapping, _find_module(source))
    by_ours = {ours: theirs for theirs, ours in mapping.items()}
    variables: dict = {}
    for collection, path, key, torch_shape, flatten in layout:
        array = _to_numpy(state_dict[by_ours[key]])
        converted = _torch_to_flax(array.astype(np.float32), path[-1], flatten)
        _set(variables, (collection,) + path, np.ascontiguousarray(converted))
    _check_finite(name, variables, by_ours, layout)
    return (variables, mapping) if return_mapping else variables


def _check_variables_fit(name: str, variables: Any, layout, create_kwargs: dict) -> None:
    """Raise `ValueError` naming the first variable of `name` missing from `variables`, or mis-shaped."""
    if not isinstance(variables, Mapping):
        raise ValueError(f"to_torch({name!r}, ...): variables must be a dict {{'params': ..., ['batch_stats']}}; "
                         f"got {type(variables).__name__}")
    options = f" with {create_kwargs}" if create_kwargs else ""
    for collection, path, _, torch_shape, flatten in layout:
        tree = variables.get(collection)
        for part in path:
            tree = tree.get(part) if isinstance(tree, Mapping) else None
        where = "/".join((collection,) + path)
        if tree is None:
            raise ValueError(f"variables do not fit {name}{options}: {where} is missing. Are they another "
                             "model's? (to_torch takes the name and options the variables were created with)")
        wanted = _torch_to_flax(np.empty(torch_shape, np.int8), path[-1], flatten).shape
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
    import torch  # noqa: PLC0415 - torch is optional

    _, layout = _build_layout(name, create_kwargs)
    _check_variables_fit(name, variables, layout, create_kwargs)
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
    _, pairs = _resolve(name, {new: target[old] for old, new in stripped.items()}, create_kwargs, mapping,
                        _find_module(like))
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
    from jaxnets.models.saving import save_model  # noqa: PLC0415 - keeps interop light

    variables, pairs = from_torch(name, checkpoint, mapping=mapping, return_mapping=True, **create_kwargs)
    path = save_model(output, name, variables, overwrite=overwrite, contract=contract, **create_kwargs)
    return path, pairs


__all__ = [
    "AmbiguousMapping", "CONTAINER_KEYS", "NonFiniteWeights", "StateDictMismatch", "TorchCheckpointError",
    "UnsafeCheckpoint", "convert", "from_torch",
    "load_state_dict", "match_state_dict", "to_torch",
]
