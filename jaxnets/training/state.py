"""TrainState: everything a training run carries from step to step, explicitly."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxnets import models


class TrainState(flax.struct.PyTreeNode):
    """Step, parameters, BatchNorm statistics, optimizer state and dropout key.

    A pytree: it goes through `jax.jit` (and is donated there), and its array
    fields are what a checkpoint stores. `apply_fn` and `tx` are static.
    """

    step: jax.Array  # [] int32, optimizer steps taken
    params: Any
    batch_stats: Any  # {} for models without BatchNorm
    opt_state: optax.OptState
    key: jax.Array  # [] typed PRNG key (jax.random.key); dropout uses fold_in(key, step)
    apply_fn: Any = flax.struct.field(pytree_node=False)
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

    @property
    def compute_dtype(self) -> jnp.dtype:
        """The compute dtype of the model behind `apply_fn` (its `dtype` field; float32 when it has none)."""
        dtype = getattr(getattr(self.apply_fn, "__self__", None), "dtype", None)
        return jnp.dtype(dtype or jnp.float32)

    @classmethod
    def create(cls, model: nn.Module, tx: optax.GradientTransformation, seed: int = 0,
               variables: dict | None = None) -> TrainState:
        """Initialise a model (or adopt given `variables`) and its optimizer state.

        `seed` gives both the initial weights (when `variables` is None) and the
        dropout key stream, so a run is reproducible from the seed alone.
        """
        init_key, dropout_key = jax.random.split(jax.random.key(seed))
        if variables is None:
            variables = models.init(model, init_key)
        params = jax.tree.map(jnp.asarray, variables["params"])
        batch_stats = jax.tree.map(jnp.asarray, variables.get("batch_stats", {}))
        return cls(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                   opt_state=tx.init(params), key=dropout_key, apply_fn=model.apply, tx=tx)

    @property
    def variables(self) -> dict:
        """`{'params', ['batch_stats']}`, ready for `model.apply`."""
        return {"params": self.params, **({"batch_stats": self.batch_stats} if self.batch_stats else {})}

    def arrays(self) -> dict:
        """The array fields as a plain dict of numeric arrays: what checkpoints store and checksum.

        The typed key is stored as its raw data (`jax.random.key_data`: `[2]`
        uint32 for the default threefry), which is also how checkpoints written
        before keys were typed hold it, so those still restore.
        """
        return {"step": self.step, "params": self.params, "batch_stats": self.batch_stats,
                "opt_state": self.opt_state, "key": jax.random.key_data(self.key)}

    def replace_arrays(self, arrays: dict) -> TrainState:
        """This state with its array fields taken from `arrays` (the inverse of `arrays()`: a restored checkpoint).

        The raw key data is wrapped back into a typed key (`jax.random.wrap_key_data`).
        """
        return self.replace(**{**arrays, "key": jax.random.wrap_key_data(arrays["key"])})
