"""The LeNet family: two conv-ReLU-maxpool stages, then three dense layers.

One builder, three variants from the texts (`functools.partial`):
  * `LeNetMNIST`  (text 000 `Net`):    conv 1->6 k3 p1, conv 6->16 k3 p1, fc 784-120-84-10
  * `LeNet5`      (text 003 `CNN`):    conv 3->6 k5,    conv 6->16 k5,    fc 400-120-84-10
  * `LeNetCIFAR`  (text 002 `LeNet`):  conv 3->16 k5,   conv 16->32 k5,   fc 800-120-84-10
    (the text applies softmax before CrossEntropyLoss, a bug; we return logits)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxnets import layers
from jaxnets.models.inputs import square_image_shape


class LeNet(nn.Module):
    """LeNet builder.

    Input: `[N, image_size, image_size, in_channels]` float32 (NHWC).
    Output: `[N, num_classes]` float32 logits.
    PyTorch names: `conv1`, `conv2`, `fc1`, `fc2`, `fc3`.
    """

    conv_channels: Sequence[int] = (6, 16)
    kernel_size: int = 5
    padding: int = 0
    hidden_sizes: Sequence[int] = (120, 84)
    in_channels: int = 3
    image_size: int = 32
    num_classes: int = 10
    dtype: Any = jnp.float32
    name_for_errors: str = "lenet"  # the catalog name (read there from the preset), used in errors

    input_shape = property(square_image_shape)

    @property
    def input_spec(self) -> tuple[int | None, ...]:
        """The input contract (per example, `None`: any size): one fixed size."""
        return self.input_shape

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        layers.check_input(x, self.name_for_errors, self.input_spec)
        x = x.astype(self.dtype)
        for i, channels in enumerate(self.conv_channels):
            x = layers.Conv(channels, (self.kernel_size,) * 2, padding=self.padding, dtype=self.dtype,
                            name=f"conv{i + 1}")(x)
            x = layers.max_pool(nn.relu(x), 2)
        x = layers.flatten(x)
        for i, size in enumerate(self.hidden_sizes):
            x = nn.relu(layers.Dense(size, dtype=self.dtype, name=f"fc{i + 1}")(x))
        x = layers.Dense(self.num_classes, dtype=self.dtype, name=f"fc{len(self.hidden_sizes) + 1}")(x)
        return x.astype(layers.logits_dtype(self.dtype))  # float32 logits, float64 kept


LeNetMNIST = functools.partial(
    LeNet, conv_channels=(6, 16), kernel_size=3, padding=1, in_channels=1, image_size=28, name_for_errors="lenet"
)
LeNet5 = functools.partial(
    LeNet, conv_channels=(6, 16), kernel_size=5, padding=0, in_channels=3, image_size=32, name_for_errors="lenet5"
)
LeNetCIFAR = functools.partial(
    LeNet, conv_channels=(16, 32), kernel_size=5, padding=0, in_channels=3, image_size=32, name_for_errors="lenet-cifar"
)
