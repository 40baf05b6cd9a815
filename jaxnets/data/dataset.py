"""`Dataset`, the in-memory split `load` returns, and the seeded splits of one."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Dataset:
    """An in-memory split: what `load` returns."""

    images: np.ndarray  # [N, H, W, C] uint8
    labels: np.ndarray  # [N] int32
    class_names: tuple[str, ...]
    name: str
    split: str

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, indices: np.ndarray, split: str | None = None) -> Dataset:
        """The examples at `indices` (e.g. from `random_split`)."""
        return dataclasses.replace(self, images=self.images[indices], labels=self.labels[indices],
                                   split=split or self.split)


def random_split(n: int, fractions: Sequence[float] = (0.8, 0.2), seed: int = 0) -> list[np.ndarray]:
    """`torch.utils.data.random_split(range(n), fractions, generator=seed)` as index arrays.

    Lengths are `floor(n * f)`, with the remainder dealt one by one to the
    first parts (PyTorch's rule); the permutation is seeded.

    Raises:
      ValueError: fractions not positive or not summing to 1.
    """
    fractions = [float(f) for f in fractions]
    if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be >= 0 and sum to 1; got {fractions}")
    lengths = [int(np.floor(n * f)) for f in fractions]
    for i in range(n - sum(lengths)):
        lengths[i % len(lengths)] += 1
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.split(order, np.cumsum(lengths)[:-1])]


def train_val_split(dataset: Dataset, val_fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Split a training set into train and held-out parts (the texts' 80/20).

    The held-out part is for model selection; the test split stays untouched.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1); got {val_fraction}")
    train_index, val_index = random_split(len(dataset), (1.0 - val_fraction, val_fraction), seed)
    return dataset.subset(train_index, "train"), dataset.subset(val_index, "validation")
