"""jaxnets.layers.max_pool: PyTorch's `MaxPool2d` values and gradients, on every window the models use."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnets import layers


def _torch_rule_gradient(x: np.ndarray, grad: np.ndarray, window: int) -> np.ndarray:
    """PyTorch's max-pool gradient, written out: each output's gradient to the first maximum of its tile (row-major)."""
    dx = np.zeros_like(x)
    batch, rows, cols, channels = grad.shape
    for n in range(batch):
        for r in range(rows):
            for c in range(cols):
                for ch in range(channels):
                    tile = x[n, r * window:(r + 1) * window, c * window:(c + 1) * window, ch]
                    i, j = np.unravel_index(np.argmax(tile), tile.shape)  # argmax: the first maximum
                    dx[n, r * window + i, c * window + j, ch] += grad[n, r, c, ch]
    return dx


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("window, height, width", [(2, 8, 8), (2, 7, 9), (3, 10, 8), (4, 8, 8)])
def test_max_pool_equals_pytorch_values_and_gradient_with_ties(window, height, width, dtype):
    rng = np.random.default_rng(window * 100 + height)
    # Few distinct values, so most tiles hold ties (as bfloat16 and ReLU outputs do) and the rule matters.
    x = jnp.asarray(rng.integers(-2, 3, size=(2, height, width, 3)), dtype)
    rows, cols = height // window, width // window
    grad = jnp.asarray(rng.normal(size=(2, rows, cols, 3)), dtype)

    y, pullback = jax.vjp(lambda x: layers.max_pool(x, window), x)
    (dx,) = jax.jit(pullback)(grad)
    want_y = nn.max_pool(x.astype(jnp.float32), (window, window), strides=(window, window))
    assert y.dtype == x.dtype and dx.dtype == x.dtype and dx.shape == x.shape
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(want_y))
    want_dx = _torch_rule_gradient(np.asarray(x, np.float32), np.asarray(grad, np.float32), window)
    np.testing.assert_array_equal(np.asarray(dx, np.float32), want_dx)


def test_max_pool_gradient_matches_torch_itself():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, size=(2, 6, 7, 4)).astype(np.float32)  # ties in most tiles
    grad = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    torch.nn.functional.max_pool2d(xt, 2).backward(torch.tensor(grad.transpose(0, 3, 1, 2)))
    _, pullback = jax.vjp(lambda x: layers.max_pool(x, 2), jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(pullback(jnp.asarray(grad))[0]), xt.grad.numpy().transpose(0, 2, 3, 1))


def test_overlapping_max_pool_is_flax_reduce_window():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 9, 9, 2)), jnp.float32)
    got = layers.max_pool(x, 3, stride=2, padding=1)
    want = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
