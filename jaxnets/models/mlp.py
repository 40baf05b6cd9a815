"""The MLP of the texts: `num_layers` x (Linear -> activation), then Linear."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxnets import layers

ACTIVATIONS = {"relu": nn.relu, "sigmoid": nn.sigmoid, "tanh": nn.tanh}


class MLP(nn.Module):
    """`MyModel(num_layers, hidden_size, input_dim, output_dim)` from text 000.

    Also covers the 2-10-1 BCE classifier of text 004
    (`num_layers=1, hidden_size=10, input_dim=2, output_dim=1`) and the 1-2-1
    sigmoid curve fit of text 002 (`activation='sigmoid'`).

    Input: `[N, input_dim]` float32, or any `[N, ...]` whose trailing axes hold
    `input_dim` values (an `[N, 28, 28, 1]` MNIST batch is flattened).
    Output: `[N, output_dim]` logits (no final activation).
    PyTorch names: `hidden.{i}` (Linear), `output` (Linear).
    """

    num_layers: int = 2
    hidden_size: int = 10
    input_dim: int = 784
    output_dim: int = 10
    activation: str = "relu"
    dtype: Any = jnp.float32
    name_for_errors: str = "mlp"  # the catalog name (read there from the preset), used in errors

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One example as `models.init` builds the model: `(input_dim,)`."""
        return (self.input_dim,)

    @property
    def input_spec(self) -> tuple[int, ...]:
        """The input contract: any example shape holding `input_dim` values (flattened)."""
        return (self.input_dim,)

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose one of {sorted(ACTIVATIONS)}")
        shape = tuple(getattr(x, "shape", ()))
        if len(shape) < 2 or math.prod(shape[1:]) != math.prod(self.input_spec):
            raise ValueError(
                f"{self.name_for_errors} expects input of shape (N, {self.input_dim}) "
                f"(or (N, ...) holding {self.input_dim} "
                f"values per example); got {shape}. Set input_dim= to match your data."
            )
        x = layers.flatten(x).astype(self.dtype)
        act = ACTIVATIONS[self.activation]
        for i in range(self.num_layers):
            x = act(layers.Dense(self.hidden_size, dtype=self.dtype, name=f"hidden.{i}")(x))
        x = layers.Dense(self.output_dim, dtype=self.dtype, name="output")(x)
        return x.astype(layers.logits_dtype(self.dtype))  # float32 logits, float64 kept
