"""Data sets that need no download: scikit-learn's digits, and a seeded synthetic set."""

from __future__ import annotations

import numpy as np

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 1234  # fixed, so 'train' and 'test' never overlap


def _resize_bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """`[N, h, w]` float -> `[N, size, size]` (align-corners bilinear, host-side, once)."""
    n, h, w = images.shape
    ys, xs = np.linspace(0, h - 1, size), np.linspace(0, w - 1, size)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    wy, wx = (ys - y0)[None, :, None], (xs - x0)[None, None, :]
    top = images[:, y0][:, :, x0] * (1 - wx) + images[:, y0][:, :, x1] * wx
    bottom = images[:, y1][:, :, x0] * (1 - wx) + images[:, y1][:, :, x1] * wx
    return top * (1 - wy) + bottom * wy


def load_digits(split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """The 1,797 real 8x8 handwritten digits shipped inside scikit-learn, MNIST-framed.

    Each 8x8 image (values 0..16) is upsampled to 20x20 and centred in a 28x28
    frame, as MNIST centres its 20x20 digits, so MNIST models run unchanged.
    A fixed seeded 80/20 cut gives the 'train' (1,437) and 'test' (360) splits.

    Returns:
      images uint8 `[N, 28, 28, 1]`, labels int32 `[N]`, class names '0'..'9'.
    """
    from sklearn.datasets import load_digits as sklearn_digits  # heavy import

    bunch = sklearn_digits()
    small = bunch.images.astype(np.float32) / 16.0
    big = _resize_bilinear(small, 20)
    images = np.zeros((len(big), 28, 28, 1), np.uint8)
    images[:, 4:24, 4:24, 0] = np.clip(np.rint(big * 255), 0, 255).astype(np.uint8)
    labels = bunch.target.astype(np.int32)
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(labels))
    n_test = int(round(len(labels) * DIGITS_TEST_FRACTION))
    index = order[n_test:] if split == "train" else order[:n_test]
    return images[np.sort(index)], labels[np.sort(index)], tuple(str(i) for i in range(10))


def load_synthetic(
    split: str,
    shape: tuple[int, int, int] = (32, 32, 3),
    num_examples: int = 1024,
    num_classes: int = 10,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """A seeded, learnable stand-in of any shape: class prototype + noise.

    Returns:
      images uint8 `[num_examples, *shape]`, labels int32, class names.
    """
    rng = np.random.default_rng(seed)
    prototypes = rng.uniform(0, 255, size=(num_classes, *shape))
    split_rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    labels = split_rng.integers(0, num_classes, num_examples).astype(np.int32)
    noise = split_rng.normal(0, 60, size=(num_examples, *shape))
    images = np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8)
    return images, labels, tuple(f"class_{i}" for i in range(num_classes))
