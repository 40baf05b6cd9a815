"""Every model of the texts as a flax.linen Module: pure `init` / `apply`.

    >>> import jax, jax.numpy as jnp
    >>> from jaxnets import models
    >>> model = models.create("lenet5")
    >>> variables = models.init(model, jax.random.key(0))
    >>> logits = model.apply(variables, jnp.zeros((8, 32, 32, 3)))
    >>> logits.shape
    (8, 10)

Parameters and BatchNorm statistics live only in the variables dict; train
with `model.apply(variables, x, train=True, mutable=['batch_stats'],
rngs={'dropout': key})`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxnets import backend

from jaxnets.models.lenet import LeNet, LeNet5, LeNetCIFAR, LeNetMNIST
from jaxnets.models.mlp import MLP
from jaxnets.models.resnet import (
    BasicBlock,
    Bottleneck,
    ResNet,
    ResNet18,
    ResNet18ImageNet,
    ResNet34,
    ResNet34ImageNet,
    ResNet50,
    ResNet50ImageNet,
)
from jaxnets.models.vgg import CONFIGS as VGG_CONFIGS
from jaxnets.models.vgg import VGG, vgg

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "lenet": LeNetMNIST,
    "lenet5": LeNet5,
    "lenet-cifar": LeNetCIFAR,
    "resnet18": ResNet18,
    "resnet34": ResNet34,
    "resnet50": ResNet50,
}
for _config in VGG_CONFIGS:
    _REGISTRY[_config] = vgg(_config)
    _REGISTRY[_config + "_bn"] = vgg(_config, batch_norm=True)
# torchvision's ImageNet layouts, key names and init (1,000 classes, 224x224).
_REGISTRY.update({
    "resnet18_imagenet": ResNet18ImageNet,
    "resnet34_imagenet": ResNet34ImageNet,
    "resnet50_imagenet": ResNet50ImageNet,
})
for _config in VGG_CONFIGS:
    _REGISTRY[_config + "_imagenet"] = vgg(_config, imagenet=True)
    _REGISTRY[_config + "_bn_imagenet"] = vgg(_config, batch_norm=True, imagenet=True)


def available() -> list[str]:
    """The model names `create` accepts."""
    return list(_REGISTRY)


def _model_class(builder: Callable[..., nn.Module]) -> type[nn.Module]:
    return builder.func if isinstance(builder, functools.partial) else builder


def create(name: str, **kwargs) -> nn.Module:
    """Build a model by name.

    Args:
      name: one of `available()`.
      **kwargs: fields of the model, e.g. `num_classes=100`, `dtype=jnp.bfloat16`;
        the MLP takes `num_layers`, `hidden_size`, `input_dim`, `output_dim`
        (`num_classes` is accepted as an alias of `output_dim`); VGG takes
        `head='cifar'|'imagenet'`; ResNet takes `layout='cifar'|'torchvision'`
        (the `*_imagenet` names are torchvision's layouts, 1,000 classes).

    Raises:
      ValueError: unknown name (the message lists the available ones), an
        argument the model does not take (the message lists those it does), or
        a class count (`num_classes`, `output_dim`) that is not a positive integer.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(available())}")
    builder = _REGISTRY[name]
    cls = _model_class(builder)
    if cls is MLP and "num_classes" in kwargs:
        kwargs.setdefault("output_dim", kwargs.pop("num_classes"))
    fields = {f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name")}
    fields.discard("name_for_errors")
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ValueError(f"{name} does not take {unknown}; it takes: {', '.join(sorted(fields))}")
    for key in ("num_classes", "output_dim"):
        value = kwargs.get(key)
        if value is not None and (isinstance(value, bool) or not hasattr(value, "__index__") or value < 1):
            raise ValueError(f"{name}: {key} must be a positive integer, got {value!r}")
    return builder(**kwargs)


def example_input(model: nn.Module, batch_size: int = 1, dtype=jnp.float32) -> jnp.ndarray:
    """Zeros of the shape `model` expects: `[batch_size, *model.input_shape]`."""
    return jnp.zeros((batch_size, *model.input_shape), dtype)


def init(model: nn.Module, key: jax.Array, batch_size: int = 1) -> dict:
    """`model.init` on an example input; returns `{'params': ..., ['batch_stats': ...]}`.

    Runs under `jax.jit` so that initialising a large model is one compiled
    program rather than thousands of eager ops.
    """
    x = example_input(model, batch_size)
    return backend.jit(lambda k: model.init(k, x, train=False))(key)


def count_params(variables: dict) -> int:
    """Number of trainable parameters (the `params` collection only)."""
    return sum(int(p.size) for p in jax.tree_util.tree_leaves(variables["params"]))


__all__ = [
    "MLP", "LeNet", "LeNetMNIST", "LeNet5", "LeNetCIFAR", "ResNet", "ResNet18", "ResNet34", "ResNet50",
    "ResNet18ImageNet", "ResNet34ImageNet", "ResNet50ImageNet",
    "BasicBlock", "Bottleneck", "VGG", "VGG_CONFIGS", "available", "create", "example_input", "init", "count_params",
]
