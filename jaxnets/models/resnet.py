"""ResNet in two layouts: pytorch-cifar's (CIFAR-10) and torchvision's (ImageNet).

`layout='cifar'` (kuangliu/pytorch-cifar, the texts' ResNet): 3x3 conv stem
(64 channels, stride 1) + BN + ReLU; four stages of blocks with
64/128/256/512 planes and strides 1/2/2/2 (a 1x1 conv + BN `shortcut` when
the shape changes); global average pool (pytorch-cifar's `avg_pool2d(4)` is
the same thing on the 4x4 map of a 32x32 input; global here, so any size
works); Linear `linear` to `num_classes`. PyTorch's
layer-default init. ResNet-18 has 11,173,962 parameters with 10 classes.

`layout='torchvision'` (torchvision.models.resnet18/34/50): 7x7 stride-2 conv
stem + BN + ReLU + 3x3 stride-2 max pool; the same stages with a
`downsample` shortcut; global average pool; Linear `fc`. torchvision's init
(kaiming normal, fan_out, for convs; BatchNorm 1/0; `fc` as nn.Linear's
default). ResNet-18 has 11,689,512 parameters with 1,000 classes,
ResNet-50 25,557,032.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxnets import layers
from jaxnets.models.inputs import square_image_shape

LAYOUTS = ("cifar", "torchvision")


class _Block(nn.Module):
    """Fields and layer factories shared by the two block types."""

    planes: int
    stride: int = 1
    dtype: Any = jnp.float32
    layout: str = "cifar"
    expansion = 1

    def layer_factories(self, train: bool):
        kernel_init = layers.torchvision_conv_init if self.layout == "torchvision" else layers.torch_default_kernel_init
        conv = functools.partial(layers.Conv, use_bias=False, kernel_init=kernel_init, dtype=self.dtype)
        norm = functools.partial(layers.BatchNorm, use_running_average=not train, dtype=self.dtype)
        return conv, norm

    def shortcut(self, x: jnp.ndarray, conv, norm) -> jnp.ndarray:
        """Identity, or 1x1 conv + BN when the shape changes.

        Named `shortcut.{0,1}` (pytorch-cifar) or `downsample.{0,1}` (torchvision)
        in this block's scope, beside `conv1`/`bn1` (PyTorch's state_dict keys).
        """
        out_channels = self.expansion * self.planes
        if self.stride == 1 and x.shape[-1] == out_channels:
            return x
        prefix = "downsample" if self.layout == "torchvision" else "shortcut"
        x = conv(out_channels, (1, 1), strides=self.stride, name=f"{prefix}.0")(x)
        return norm(name=f"{prefix}.1")(x)


class BasicBlock(_Block):
    """Two 3x3 convs (ResNet-18/34). `[N, H, W, Cin] -> [N, H/s, W/s, planes]`."""

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        conv, norm = self.layer_factories(train)
        out = conv(self.planes, (3, 3), strides=self.stride, padding=1, name="conv1")(x)
        out = nn.relu(norm(name="bn1")(out))
        out = conv(self.planes, (3, 3), padding=1, name="conv2")(out)
        out = norm(name="bn2")(out)
        return nn.relu(out + self.shortcut(x, conv, norm))


class Bottleneck(_Block):
    """1x1 -> 3x3 -> 1x1 convs (ResNet-50). `[N, H, W, Cin] -> [N, H/s, W/s, 4*planes]`."""

    expansion = 4

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        conv, norm = self.layer_factories(train)
        out = nn.relu(norm(name="bn1")(conv(self.planes, (1, 1), name="conv1")(x)))
        out = conv(self.planes, (3, 3), strides=self.stride, padding=1, name="conv2")(out)
        out = nn.relu(norm(name="bn2")(out))
        out = norm(name="bn3")(conv(self.expansion * self.planes, (1, 1), name="conv3")(out))
        return nn.relu(out + self.shortcut(x, conv, norm))


class ResNet(nn.Module):
    """ResNet builder: `block_cls` repeated `stage_sizes` times per stage.

    Input: `[N, H, W, in_channels]` float32 (NHWC), any H and W (32x32 for
    CIFAR, 224x224 the usual ImageNet size; `image_size` is only the size
    `models.init` builds with).
    Output: `[N, num_classes]` float32 logits.
    PyTorch names: `conv1`, `bn1`, `layer{1-4}.{j}.{conv,bn}{1-3}`, then
    `layer{i}.{j}.shortcut.{0,1}` and `linear` (`layout='cifar'`) or
    `layer{i}.{j}.downsample.{0,1}` and `fc` (`layout='torchvision'`).
    """

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    block_cls: Any = BasicBlock
    num_classes: int = 10
    in_channels: int = 3
    image_size: int = 32
    layout: str = "cifar"
    dtype: Any = jnp.float32
    width_divisor: int = 1  # every channel count divided by this: tiny variants with the same code paths
    name_for_errors: str = "resnet"  # the catalog name (read there from the preset), used in errors

    input_shape = property(square_image_shape)

    @property
    def input_spec(self) -> tuple[int | None, ...]:
        """The input contract (per example, `None`: any size): any height and width, `in_channels` channels."""
        return (None, None, self.in_channels)

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        if self.layout not in LAYOUTS:
            raise ValueError(f"{self.name_for_errors}: unknown layout {self.layout!r}; choose one of {LAYOUTS}")
        layers.check_input(x, self.name_for_errors, self.input_spec)
        x = x.astype(self.dtype)
        torchvision = self.layout == "torchvision"
        widths = [layers.divide_width(w, self.width_divisor, self.name_for_errors) for w in (64, 128, 256, 512)]
        if torchvision:
            x = layers.Conv(widths[0], (7, 7), strides=2, padding=3, use_bias=False,
                            kernel_init=layers.torchvision_conv_init, dtype=self.dtype, name="conv1")(x)
        else:
            x = layers.Conv(widths[0], (3, 3), padding=1, use_bias=False, dtype=self.dtype, name="conv1")(x)
        x = nn.relu(layers.BatchNorm(use_running_average=not train, dtype=self.dtype, name="bn1")(x))
        if torchvision:  # nn.MaxPool2d(3, stride=2, padding=1): pads with -inf
            x = layers.max_pool(x, 3, 2, padding=1)
        for stage, (blocks, planes) in enumerate(zip(self.stage_sizes, widths, strict=True)):
            for j in range(blocks):
                stride = 2 if stage > 0 and j == 0 else 1
                x = self.block_cls(planes, stride, dtype=self.dtype, layout=self.layout,
                                   name=f"layer{stage + 1}.{j}")(x, train)
        # Global average pool at any input size (AdaptiveAvgPool2d(1)); at 32x32 it is
        # pytorch-cifar's avg_pool2d(4) over the final 4x4 map.
        x = jnp.mean(x, axis=(1, 2))
        x = layers.Dense(self.num_classes, dtype=self.dtype, name="fc" if torchvision else "linear")(x)
        return x.astype(layers.logits_dtype(self.dtype))  # float32 logits, float64 kept


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock, name_for_errors="resnet18")
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock, name_for_errors="resnet34")
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck, name_for_errors="resnet50")

_TORCHVISION = dict(layout="torchvision", num_classes=1000, image_size=224)
ResNet18ImageNet = functools.partial(ResNet18, name_for_errors="resnet18_imagenet", **_TORCHVISION)
ResNet34ImageNet = functools.partial(ResNet34, name_for_errors="resnet34_imagenet", **_TORCHVISION)
ResNet50ImageNet = functools.partial(ResNet50, name_for_errors="resnet50_imagenet", **_TORCHVISION)
