"""Our model's variables as PyTorch sees them: one `LayoutRow` per variable, grouped into `Layer`s.

The layout is the single table both directions read: which collection and
path a variable has in flax, its PyTorch key and shape, and, for a Linear
layer fed by a flattened NCHW feature map, the (C, H, W) whose rows are
permuted between PyTorch's and our order.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxnets import models
from jaxnets.errors import describe
from jaxnets.interop.errors import StateDictMismatch

# Our leaf name -> PyTorch's, per collection.
_PARAM_TO_TORCH = {"kernel": "weight", "bias": "bias", "scale": "weight"}
_STAT_TO_TORCH = {"mean": "running_mean", "var": "running_var"}
# PyTorch's order inside a layer.
TORCH_LEAF_ORDER = {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3}


class LayoutRow(NamedTuple):
    """One variable of our model as PyTorch sees it.

    Attributes:
      collection: 'params' or 'batch_stats'.
      path: its path in the collection, e.g. `('layer1.0.conv1', 'kernel')`.
      torch_key: the PyTorch state_dict key, e.g. `'layer1.0.conv1.weight'`.
      torch_shape: the tensor's shape in PyTorch's layout.
      flatten: `(C, H, W)` of the NCHW feature map a Linear kernel reads flattened, else None.
    """

    collection: str
    path: tuple[str, ...]
    torch_key: str
    torch_shape: tuple[int, ...]
    flatten: tuple[int, int, int] | None

    @property
    def leaf(self) -> str:
        """Our leaf name: 'kernel', 'bias', 'scale', 'mean' or 'var'."""
        return self.path[-1]

    @property
    def module(self) -> str:
        """The layer's path, e.g. `'layer1.0.conv1'`."""
        return ".".join(self.path[:-1])

    @property
    def torch_leaf(self) -> str:
        """PyTorch's leaf name: 'weight', 'bias', 'running_mean' or 'running_var'."""
        return self.torch_key.rsplit(".", 1)[-1]

    def lookup(self, variables: Mapping) -> Any:
        """This variable's value in `variables` (`{'params': ..., 'batch_stats': ...}`)."""
        value = variables[self.collection]
        for part in self.path:
            value = value[part]
        return value

    def flax_shape(self) -> tuple[int, ...]:
        """The variable's shape in our layout."""
        return tuple(torch_to_flax(np.empty(self.torch_shape, np.int8), self.leaf, self.flatten).shape)


def _leaves(tree: Mapping, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, leaf) of every leaf of a nested dict, in insertion order."""
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from _leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def set_leaf(tree: dict, path: tuple[str, ...], value: Any) -> None:
    """Put `value` at `path` in the nested dict `tree`, creating the dicts on the way."""
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _torch_key(collection: str, path: tuple[str, ...]) -> str:
    table = _PARAM_TO_TORCH if collection == "params" else _STAT_TO_TORCH
    return ".".join(path[:-1] + (table[path[-1]],))


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


def torch_to_flax(array: np.ndarray, leaf: str, flatten: tuple[int, int, int] | None) -> np.ndarray:
    if leaf == "kernel" and array.ndim == 4:
        return array.transpose(2, 3, 1, 0)
    if leaf == "kernel" and array.ndim == 2:
        if flatten is not None:
            out = array.shape[0]
            return array.reshape(out, *flatten).transpose(2, 3, 1, 0).reshape(-1, out)
        return array.T
    return array


def flax_to_torch(array: np.ndarray, leaf: str, flatten: tuple[int, int, int] | None) -> np.ndarray:
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
class Layer:
    """One of our layers: its module path, role (conv, linear, batchnorm) and layout rows."""

    module: str
    role: str = ""
    rows: list[LayoutRow] = dataclasses.field(default_factory=list)

    def describe(self) -> str:
        """`'conv weight (O, I, kh, kw), bias (O,)'`: the role and each tensor as PyTorch holds it."""
        return f"{self.role} " + ", ".join(f"{row.torch_leaf} {row.torch_shape}" for row in self.rows)


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


def model_layout(model) -> list[LayoutRow]:
    """Every variable of `model` as a `LayoutRow`, in module order."""
    try:
        return list(_cached_layout(model))
    except TypeError:  # an unhashable field value: compute it each time
        return _compute_layout(model)


@functools.lru_cache(maxsize=64)
def _cached_layout(model) -> tuple[LayoutRow, ...]:
    # Tracing a ResNet-50's init takes seconds; the layout depends only on the
    # model's (frozen, hashable) configuration.
    return tuple(_compute_layout(model))


def _compute_layout(model) -> list[LayoutRow]:
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
        torch_shape = tuple(flax_to_torch(dummy, path[-1], flatten).shape)
        rows.append(LayoutRow(collection, path, _torch_key(collection, path), torch_shape, flatten))
    return rows


def layer_role(torch_leaves: set[str], weight_ndim: int) -> str:
    """How a layer's tensors are compared, on either side: 'batchnorm' (it holds running statistics),
    'conv' (a 4-D weight), 'linear' (a 2-D weight) or 'other'."""
    if "running_mean" in torch_leaves:
        return "batchnorm"
    return {4: "conv", 2: "linear"}.get(weight_ndim, "other")


def our_layers(layout: list[LayoutRow]) -> list[Layer]:
    """Our variables grouped per layer, layers in module order (BatchNorm stats with their layer), each
    layer's rows in PyTorch's order."""
    by_module: dict[str, Layer] = {}
    for row in layout:
        by_module.setdefault(row.module, Layer(row.module)).rows.append(row)
    for layer in by_module.values():
        weight = next((row.torch_shape for row in layer.rows if row.torch_leaf == "weight"), ())
        layer.role = layer_role({row.torch_leaf for row in layer.rows}, len(weight))
        layer.rows.sort(key=lambda row: TORCH_LEAF_ORDER[row.torch_leaf])
    return list(by_module.values())


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


def build_layout(name: str, create_kwargs: dict) -> tuple[Any, list[LayoutRow]]:
    """(model, layout) for `models.create(name, **create_kwargs)`.

    Raises:
      ValueError: an unknown name or option, an option of the wrong type, or a model that cannot be built
        with these options (one line naming them and the first line of why).
    """
    model = models.create(name, **create_kwargs)
    _check_create_kwargs(name, model, create_kwargs)
    try:
        return model, model_layout(model)
    except Exception as err:  # e.g. hidden_size=0: the layers refuse their sizes (TypeError, ZeroDivisionError, ...)
        options = ", ".join(f"{k}={v!r}" for k, v in create_kwargs.items())
        raise ValueError(f"cannot build {name} with {options or 'its defaults'}: {describe(err)}") from err
