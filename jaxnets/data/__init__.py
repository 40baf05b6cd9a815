"""Data sets from one place: tfds, the standard files on disk, or embedded.

    >>> from jaxnets import data
    >>> train = data.load("digits", "train")          # embedded, no download
    >>> train, val = data.train_val_split(train, 0.2, seed=0)
    >>> loader = data.Loader(train.images, train.labels, 128, train=True,
    ...                      preprocess=data.Preprocess.for_dataset("digits", train.images))
    >>> batch = next(iter(loader))                    # Batch(image, label, mask) on device

`load(name, split, source=...)` returns a `Dataset` of uint8 NHWC images and
int32 labels; `source='files'` reads MNIST IDX / CIFAR binary or python files
in `data_dir`, `'tfds'` goes through `tfds.data_source`, `'auto'` prefers files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxnets.data.embedded import load_digits, load_synthetic
from jaxnets.data.errors import CorruptDataFile, DataError, DataNotFound, UnsafePickle
from jaxnets.data.files import FILE_DATASETS, expected_files, has_files, load_files
from jaxnets.data.pipeline import NORMALIZATION, Batch, Loader, Preprocess, channel_stats, preprocess, random_crop, random_flip
from jaxnets.data.tfds_source import TFDS_NAMES, load_tfds

DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "synthetic")
SPLITS = ("train", "test")
SOURCES = ("auto", "tfds", "files")


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

    def subset(self, indices: np.ndarray, split: str | None = None) -> "Dataset":
        """The examples at `indices` (e.g. from `random_split`)."""
        return dataclasses.replace(self, images=self.images[indices], labels=self.labels[indices],
                                   split=split or self.split)


def load(name: str, split: str = "train", *, source: str = "auto", data_dir: str | Path | None = None,
         download: bool = True, **options) -> Dataset:
    """Load a whole split into memory.

    Args:
      name: one of `DATASETS`: 'digits' (embedded, scikit-learn's real 8x8
        digits framed as 28x28), 'mnist', 'fashion_mnist', 'cifar10',
        'cifar100', or 'synthetic' (seeded; `options` shape, num_examples,
        num_classes, seed).
      split: 'train' or 'test'.
      source: 'files' (the standard files in `data_dir`), 'tfds', or 'auto'
        (files when `data_dir` has them, otherwise tfds).
      data_dir: folder with the files, or tfds's data_dir.
      download: let tfds download and prepare when not prepared (needs internet).

    Returns:
      a `Dataset` with uint8 `[N, H, W, C]` images and int32 `[N]` labels.

    Raises:
      DataError: unknown name, split or source.
      DataNotFound: not on disk and not obtainable; says which files to put where.
      CorruptDataFile / UnsafePickle: a damaged or hostile file (named).
    """
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; available: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {SPLITS} (split 'train' further with train_val_split)")
    if source not in SOURCES:
        raise DataError(f"unknown source {source!r}; use one of {SOURCES}")
    if options and name != "synthetic":
        raise DataError(f"{name} takes no options; got {sorted(options)}")
    if name == "digits":
        images, labels, classes = load_digits(split)
    elif name == "synthetic":
        images, labels, classes = load_synthetic(split, **options)
    elif source == "files" or (source == "auto" and has_files(name, split, Path(data_dir) if data_dir else None)):
        if data_dir is None:
            raise DataNotFound(f"source='files' needs data_dir: a folder holding {expected_files(name, split)}")
        images, labels, classes = load_files(name, split, Path(data_dir))
    else:
        try:
            images, labels, classes = load_tfds(name, split, data_dir, download=download)
        except DataNotFound as err:
            if source == "auto":
                raise DataNotFound(f"{err} Files this loader reads: {expected_files(name, split)}.") from err
            raise
    return Dataset(images, labels.astype(np.int32), tuple(classes), name, split)


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


__all__ = [
    "Batch", "CorruptDataFile", "DATASETS", "DataError", "DataNotFound", "Dataset", "FILE_DATASETS", "Loader",
    "NORMALIZATION", "Preprocess", "TFDS_NAMES", "UnsafePickle", "channel_stats", "load", "load_files", "load_tfds",
    "preprocess", "random_crop", "random_flip", "random_split", "train_val_split",
]
