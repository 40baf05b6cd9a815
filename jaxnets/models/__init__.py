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

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxnets import backend
from jaxnets.models import catalog
from jaxnets.models.catalog import Family, ModelEntry, register
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
from jaxnets.models.vgg import VGG


def available() -> list[str]:
    """The model names `create` accepts (the catalog's names)."""
    return list(catalog.names())


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
    return catalog.get(name).create(**kwargs)


def example_input(model: nn.Module, batch_size: int = 1, dtype=jnp.float32) -> jnp.ndarray:
    """Zeros of the shape `model` expects: `[batch_size, *model.input_shape]`."""
    return jnp.zeros((batch_size, *model.input_shape), dtype)


def init(model: nn.Module, key: jax.Array, batch_size: int = 1) -> dict:
    """`model.init` on an example input; returns `{'params': ..., ['batch_stats': ...]}`.

    Runs under `jax.jit` so that initialising a large model is one compiled
    program rather than thousands of eager ops. The jitted init is kept per
    model configuration (flax Modules compare and hash by their fields), so
    initialising an equal model again (a resumed run, a new seed, a notebook
    cell run twice) neither traces nor compiles again.
    """
    if isinstance(key, jax.core.Tracer):  # inside the caller's jit / eval_shape: their program and its options
        return model.init(key, example_input(model, batch_size), train=False)
    try:
        hash(model)
    except TypeError:  # a field holds an unhashable value (a list): nothing to key a cache on
        return _jitted_init.__wrapped__(model, batch_size, ())(key)
    options = {**backend.compiler_options(), **backend.init_compiler_options()}
    return _jitted_init(model, batch_size, tuple(sorted(options.items())))(key)


@functools.lru_cache(maxsize=32)
def _jitted_init(model: nn.Module, batch_size: int, options: tuple) -> Callable[[jax.Array], dict]:
    """One `backend.jit` of `model.init` per (model, batch size, compiler options); `options` only keys the cache.

    The program is compiled with `backend.init_compiler_options()` (a lower LLVM level on the CPU: a 3-4x shorter
    compile, the same weights bit for bit).
    """
    return backend.jit(lambda key: model.init(key, example_input(model, batch_size), train=False),
                       compiler_options=backend.init_compiler_options())


def count_params(variables: dict) -> int:
    """Number of trainable parameters (the `params` collection only)."""
    return sum(int(p.size) for p in jax.tree_util.tree_leaves(variables["params"]))


__all__ = [
    "MLP", "LeNet", "LeNetMNIST", "LeNet5", "LeNetCIFAR", "ResNet", "ResNet18", "ResNet34", "ResNet50",
    "ResNet18ImageNet", "ResNet34ImageNet", "ResNet50ImageNet",
    "BasicBlock", "Bottleneck", "VGG", "VGG_CONFIGS", "available", "create", "example_input", "init", "count_params",
    "catalog", "Family", "ModelEntry", "register",
]
