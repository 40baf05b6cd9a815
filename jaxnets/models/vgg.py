"""VGG from a config table (pytorch-cifar's `cfg`), with two heads.

`head='cifar'`: Linear 512 -> num_classes, as pytorch-cifar (32x32 inputs),
with PyTorch's layer-default init.
`head='imagenet'`: adaptive average pool to 7x7, then
Linear 25088 -> 4096 -> 4096 -> num_classes with ReLU and Dropout(0.5), as
torchvision (and the text's classifier), any input size, with torchvision's
init: convs kaiming normal (fan_out) with zero bias, BatchNorm 1/0, linears
N(0, 0.01) with zero bias. `vgg16_imagenet` (torchvision's `vgg16`, 1,000
classes, 224x224) has 138,357,544 parameters.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxnets import layers
from jaxnets.models.inputs import square_image_shape

# Numbers are conv output channels (3x3, pad 1, + ReLU); "M" is a 2x2 max pool.
CONFIGS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}
HEADS = ("cifar", "imagenet")


class VGG(nn.Module):
    """VGG builder.

    Input: `[N, H, W, in_channels]` float32 (NHWC; 32x32 for the CIFAR head).
    Output: `[N, num_classes]` float32 logits.
    PyTorch names: `features.{i}` counted over the torch `nn.Sequential`
    (conv, [bn], relu, ..., maxpool), then `classifier` (CIFAR head) or
    `classifier.{0,3,6}` (ImageNet head).
    """

    config: str = "vgg16"
    batch_norm: bool = False
    head: str = "cifar"
    num_classes: int = 10
    in_channels: int = 3
    image_size: int = 32
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32
    width_divisor: int = 1  # every channel count divided by this: tiny variants with the same code paths
    name_for_errors: str = "vgg"  # the catalog name (read there from the preset), used in errors

    input_shape = property(square_image_shape)

    @property
    def input_spec(self) -> tuple[int | None, ...]:
        """The input contract (per example, `None`: any size): the CIFAR head's Linear(512) only fits the 1x1
        map of a 32x32 input; the ImageNet head pools adaptively, so any size."""
        spatial = self.image_size if self.head == "cifar" else None
        return (spatial, spatial, self.in_channels)

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        name = self.name_for_errors
        if self.head not in HEADS:
            raise ValueError(f"{name}: unknown head {self.head!r}; choose one of {HEADS}")
        layers.check_input(x, name, self.input_spec)
        x = x.astype(self.dtype)
        if self.head == "imagenet":  # torchvision.models.VGG._initialize_weights
            conv = functools.partial(layers.Conv, kernel_init=layers.torchvision_conv_init,
                                     bias_init=nn.initializers.zeros)
            dense = functools.partial(layers.Dense, kernel_init=layers.torchvision_linear_init,
                                      bias_init=nn.initializers.zeros)
        else:
            conv, dense = layers.Conv, layers.Dense
        index = 0  # position in PyTorch's nn.Sequential, for matching names
        for item in CONFIGS[self.config]:
            if item == "M":
                x = layers.max_pool(x, 2)
                index += 1
                continue
            x = conv(layers.divide_width(item, self.width_divisor, name), (3, 3), padding=1, dtype=self.dtype,
                     name=f"features.{index}")(x)
            index += 1
            if self.batch_norm:
                x = layers.BatchNorm(use_running_average=not train, dtype=self.dtype, name=f"features.{index}")(x)
                index += 1
            x = nn.relu(x)
            index += 1
        if self.head == "cifar":
            x = layers.flatten(x)
            x = layers.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x)
        else:
            x = layers.flatten(layers.adaptive_avg_pool(x, (7, 7)))
            for i in (0, 3):
                x = nn.relu(dense(4096, dtype=self.dtype, name=f"classifier.{i}")(x))
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
            x = dense(self.num_classes, dtype=self.dtype, name="classifier.6")(x)
        return x.astype(layers.logits_dtype(self.dtype))  # float32 logits, float64 kept


def vgg(config: str, batch_norm: bool = False, imagenet: bool = False):
    """`VGG` preset for one config of the table (e.g. `vgg('vgg16', True)`).

    `imagenet=True` gives torchvision's model: `head='imagenet'`, 1,000
    classes, 224x224 inputs. The preset's name (`vgg16_bn_imagenet`) is its
    catalog name, used in its error messages.
    """
    name = config + ("_bn" if batch_norm else "") + ("_imagenet" if imagenet else "")
    if imagenet:
        return functools.partial(VGG, config=config, batch_norm=batch_norm, head="imagenet", num_classes=1000,
                                 image_size=224, name_for_errors=name)
    return functools.partial(VGG, config=config, batch_norm=batch_norm, name_for_errors=name)
