"""The model catalog: every fact about a model name, in one entry.

    >>> from jaxnets.models import catalog
    >>> entry = catalog.get("mlp")
    >>> entry.arguments(image_shape=(28, 28, 1), num_classes=10)   # what a data set decides
    {'input_dim': 784, 'output_dim': 10}
    >>> model = entry.create(num_classes=7)                         # the alias of output_dim
    >>> entry.family.torch_reference                                # its twin in interop.torch_models
    'MLP'

A `ModelEntry` is a name, a builder (a flax Module class or a
`functools.partial` of one) and its `Family`: the facts shared by every
variant of one builder, namely

  * the **input contract**: the model's `input_spec` (per-example shape,
    `None` for any size), enforced by `layers.check_input` in the model and
    by `check_data` before a run; the MLP flattens (any shape holding
    `input_dim` values);
  * how its **arguments follow from a data set** (`arguments`): the class
    count, and for the MLP also its input size;
  * **argument aliases** (the MLP takes `num_classes` for `output_dim`);
  * what **interop** needs: the name of its PyTorch twin in
    `jaxnets.interop.torch_models` and, for a Linear layer fed by a flattened
    NCHW feature map, which layer and how many channels (`torch_flatten`).

Adding a model is one `register(ModelEntry(...))`; `models.create`,
`models.available()`, the CLI's `--model` choices, interop and `fit` read
it from here.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

import flax.linen as nn

from jaxnets import layers
from jaxnets.registry import Registry


def _class_count(image_shape: Sequence[int], num_classes: int) -> dict:
    return {"num_classes": num_classes}


def _no_flatten(model: nn.Module) -> None:
    return None


@dataclasses.dataclass(frozen=True)
class Family:
    """What every model of one builder shares.

    Attributes:
      name: 'mlp', 'lenet', 'resnet', 'vgg', ...
      torch_reference: the class of the PyTorch twin in
        `jaxnets.interop.torch_models` (built by its `from_flax(model)`).
      arguments: `(image_shape, num_classes) -> dict` of `create` arguments a
        data set decides (default: `num_classes`).
      aliases: `{alias: field}` accepted by `create` (e.g. `num_classes` for
        the MLP's `output_dim`).
      flat_input: the model flattens each example, so any example shape
        holding `prod(input_spec)` values fits (the MLP).
      torch_flatten: `model -> (layer, channels) | None`: the Linear layer fed
        by a flattened NCHW feature map of `channels` channels, whose rows
        interop permutes between PyTorch's (C, H, W) and our (H, W, C) order.
    """

    name: str
    torch_reference: str
    arguments: Callable[[Sequence[int], int], dict] = _class_count
    aliases: Mapping[str, str] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    flat_input: bool = False
    torch_flatten: Callable[[nn.Module], tuple[str, int] | None] = _no_flatten


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One model name: its builder and its family's facts."""

    name: str
    builder: Callable[..., nn.Module]
    family: Family
    description: str = ""

    @property
    def model_class(self) -> type[nn.Module]:
        builder = self.builder
        while isinstance(builder, functools.partial):
            builder = builder.func
        return builder  # type: ignore[return-value]

    def fields(self) -> list[str]:
        """The arguments `create` takes (the model's dataclass fields, then the aliases)."""
        hidden = {"parent", "name", "name_for_errors"}
        fields = [f.name for f in dataclasses.fields(self.model_class) if f.init and f.name not in hidden]
        return sorted(fields) + sorted(self.family.aliases)

    def canonical_kwargs(self, kwargs: Mapping) -> dict:
        """`kwargs` with aliases replaced by the fields they stand for (an explicit field wins)."""
        out = dict(kwargs)
        for alias, field in self.family.aliases.items():
            if alias in out:
                value = out.pop(alias)
                out.setdefault(field, value)
        return out

    def create(self, **kwargs) -> nn.Module:
        """Build the model; see `jaxnets.models.create` for the arguments and errors."""
        kwargs = self.canonical_kwargs(kwargs)
        fields = set(self.fields()) - set(self.family.aliases)
        unknown = sorted(set(kwargs) - fields)
        if unknown:
            raise ValueError(f"{self.name} does not take {unknown}; it takes: {', '.join(sorted(fields))}")
        for key in ("num_classes", "output_dim"):
            value = kwargs.get(key)
            if value is not None and (isinstance(value, bool) or not hasattr(value, "__index__") or value < 1):
                raise ValueError(f"{self.name}: {key} must be a positive integer, got {value!r}")
        return self.builder(**kwargs)

    def arguments(self, image_shape: Sequence[int], num_classes: int) -> dict:
        """The `create` arguments a data set of `image_shape` examples and `num_classes` classes decides."""
        return self.family.arguments(tuple(image_shape), num_classes)

    def data_mismatch(self, model: nn.Module, image_shape: Sequence[int]) -> str | None:
        """Why examples of `image_shape` do not fit `model` (None when they do): its input contract."""
        spec = tuple(model.input_spec)
        if self.family.flat_input:
            fits = math.prod(image_shape) == math.prod(spec)
        else:
            try:
                layers.check_input(_Shape((1, *image_shape)), self.name, spec)
                fits = True
            except ValueError:
                fits = False
        return None if fits else f"{self.name} expects images of shape {tuple(model.input_shape)}"


class _Shape:
    """Just a `.shape`, for `layers.check_input` without building an array."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape


_CATALOG: Registry = Registry("model", ValueError)
register = _CATALOG.register
unregister = _CATALOG.unregister
names = _CATALOG.names
entries = _CATALOG.entries
get = _CATALOG.get


def family_of(model: nn.Module) -> Family:
    """The family of a built model (looked up by its class).

    Raises:
      ValueError: no registered entry builds this class.
    """
    for entry in _CATALOG.entries():
        if entry.model_class is type(model):
            return entry.family
    raise ValueError(f"{type(model).__name__} is not a registered model class; register a ModelEntry for it")


# ------------------------------------------------------------------ the built-in models

def _mlp_arguments(image_shape: Sequence[int], num_classes: int) -> dict:
    return {"input_dim": math.prod(image_shape), "output_dim": num_classes}


MLP_FAMILY = Family("mlp", "MLP", arguments=_mlp_arguments, aliases=MappingProxyType({"num_classes": "output_dim"}),
                    flat_input=True)
LENET_FAMILY = Family("lenet", "LeNet", torch_flatten=lambda m: ("fc1", m.conv_channels[-1]))
RESNET_FAMILY = Family("resnet", "ResNet")
VGG_FAMILY = Family("vgg", "VGG",
                    torch_flatten=lambda m: ("classifier.0", layers.divide_width(512, m.width_divisor, "vgg"))
                    if m.head == "imagenet" else None)


def _builder_name(builder: Callable[..., nn.Module]) -> str:
    """The name a built-in builder gives its models in errors (`name_for_errors`): its catalog name.

    Read from the preset's `functools.partial` keywords, else the class's default, so each name is
    written once, in the model's file.
    """
    keywords = builder.keywords if isinstance(builder, functools.partial) else {}
    if "name_for_errors" in keywords:
        return keywords["name_for_errors"]
    model_class = builder.func if isinstance(builder, functools.partial) else builder
    return next(f.default for f in dataclasses.fields(model_class) if f.name == "name_for_errors")


def _register_builtins() -> None:
    from jaxnets.models import lenet, mlp, resnet  # the model files import nothing of this
    from jaxnets.models.vgg import CONFIGS, vgg  # `models.vgg` is also the name of this function

    for builder, family, description in (
        (mlp.MLP, MLP_FAMILY, "text 000 MyModel: num_layers x (Linear -> ReLU), Linear; any input, flattened"),
        (lenet.LeNetMNIST, LENET_FAMILY, "text 000 Net: MNIST LeNet, 28x28x1"),
        (lenet.LeNet5, LENET_FAMILY, "text 003 CNN: LeNet-5, 32x32x3"),
        (lenet.LeNetCIFAR, LENET_FAMILY, "text 002 LeNet: wide CIFAR LeNet, 32x32x3"),
        (resnet.ResNet18, RESNET_FAMILY, "pytorch-cifar ResNet-18, any HxWx3"),
        (resnet.ResNet34, RESNET_FAMILY, "pytorch-cifar ResNet-34, any HxWx3"),
        (resnet.ResNet50, RESNET_FAMILY, "pytorch-cifar ResNet-50, any HxWx3"),
    ):
        register(ModelEntry(_builder_name(builder), builder, family, description))
    for config in CONFIGS:
        for builder, description in ((vgg(config), f"pytorch-cifar {config}, CIFAR head, 32x32x3"),
                                     (vgg(config, batch_norm=True),
                                      f"pytorch-cifar {config} with BatchNorm, CIFAR head, 32x32x3")):
            register(ModelEntry(_builder_name(builder), builder, VGG_FAMILY, description))
    # torchvision's ImageNet layouts, key names and init (1,000 classes, 224x224).
    for builder in (resnet.ResNet18ImageNet, resnet.ResNet34ImageNet, resnet.ResNet50ImageNet):
        name = _builder_name(builder)
        register(ModelEntry(name, builder, RESNET_FAMILY, f"torchvision {name.split('_')[0]}, any HxWx3"))
    for config in CONFIGS:
        for builder, description in ((vgg(config, imagenet=True), f"torchvision {config}, any HxWx3"),
                                     (vgg(config, batch_norm=True, imagenet=True),
                                      f"torchvision {config}_bn, any HxWx3")):
            register(ModelEntry(_builder_name(builder), builder, VGG_FAMILY, description))


_register_builtins()

__all__ = ["Family", "ModelEntry", "entries", "family_of", "get", "names", "register", "unregister"]
