"""ResNet for CIFAR-10, the well-known pytorch-cifar layout.

3x3 conv stem (64 channels, stride 1) + BN + ReLU; four stages of blocks with
64/128/256/512 planes and strides 1/2/2/2 (a 1x1 conv + BN shortcut when the
shape changes); 4x4 average pool; Linear to `num_classes`.
ResNet-18 has 11,173,962 parameters with 10 classes.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxnets import layers


class _Block(nn.Module):
    """Fields and layer factories shared by the two block types."""

    planes: int
    stride: int = 1
    dtype: Any = jnp.float32
    expansion = 1

    def layer_factories(self, train: bool):
        conv = functools.partial(layers.Conv, use_bias=False, dtype=self.dtype)
        norm = functools.partial(layers.BatchNorm, use_running_average=not train, dtype=self.dtype)
        return conv, norm


class BasicBlock(_Block):
    """Two 3x3 convs (ResNet-18/34). `[N, H, W, Cin] -> [N, H/s, W/s, planes]`."""

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        conv, norm = self.layer_factories(train)
        out = conv(self.planes, (3, 3), strides=self.stride, padding=1, name="conv1")(x)
        out = nn.relu(norm(name="bn1")(out))
        out = conv(self.planes, (3, 3), padding=1, name="conv2")(out)
        out = norm(name="bn2")(out)
        return nn.relu(out + _shortcut(self, x, conv, norm))


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
        return nn.relu(out + _shortcut(self, x, conv, norm))


def _shortcut(block: _Block, x: jnp.ndarray, conv, norm) -> jnp.ndarray:
    """Identity, or 1x1 conv + BN (`shortcut.0`, `shortcut.1`) when the shape changes."""
    out_channels = block.expansion * block.planes
    if block.stride == 1 and x.shape[-1] == out_channels:
        return x
    x = conv(out_channels, (1, 1), strides=block.stride, name="shortcut.0")(x)
    return norm(name="shortcut.1")(x)


class ResNet(nn.Module):
    """ResNet builder: `block_cls` repeated `stage_sizes` times per stage.

    Input: `[N, H, W, in_channels]` float32 (NHWC, H = W = 32 for CIFAR).
    Output: `[N, num_classes]` float32 logits.
    PyTorch names: `conv1`, `bn1`, `layer{1-4}.{j}.{conv,bn}{1-3}`,
    `layer{i}.{j}.shortcut.{0,1}`, `linear`.
    """

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    block_cls: Any = BasicBlock
    num_classes: int = 10
    in_channels: int = 3
    image_size: int = 32
    dtype: Any = jnp.float32
    name_for_errors: str = "resnet"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.image_size, self.image_size, self.in_channels)

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        layers.check_input(x, self.name_for_errors, (None, None, self.in_channels))
        x = x.astype(self.dtype)
        x = layers.Conv(64, (3, 3), padding=1, use_bias=False, dtype=self.dtype, name="conv1")(x)
        x = nn.relu(layers.BatchNorm(use_running_average=not train, dtype=self.dtype, name="bn1")(x))
        for stage, (blocks, planes) in enumerate(zip(self.stage_sizes, (64, 128, 256, 512))):
            for j in range(blocks):
                stride = 2 if stage > 0 and j == 0 else 1
                x = self.block_cls(planes, stride, dtype=self.dtype, name=f"layer{stage + 1}.{j}")(x, train)
        x = layers.flatten(layers.avg_pool(x, 4))
        x = layers.Dense(self.num_classes, dtype=self.dtype, name="linear")(x)
        return x.astype(jnp.promote_types(self.dtype, jnp.float32))  # float32 logits, float64 kept


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock, name_for_errors="resnet18")
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock, name_for_errors="resnet34")
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck, name_for_errors="resnet50")
