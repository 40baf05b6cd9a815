"""The data-set catalog: every fact about a data set name, in one entry.

    >>> from jaxnets.data import catalog
    >>> entry = catalog.get("cifar10")
    >>> entry.image_shape, entry.num_classes, entry.tfds_name
    ((32, 32, 3), 10, 'cifar10')

One `DatasetEntry` per name holds its example shape, class names,
normalisation (per-channel mean/std on [0, 1] pixels), where its standard
files lie on disk (`FileLayout`), its tensorflow-datasets name, and, for a
data set that needs no files (embedded or generated), the `reader` that
makes a split. `jaxnets.data.load`, the readers in `files.py` and
`tfds_source.py`, `Preprocess.for_dataset` and the CLI's `--dataset`
choices all read it from here; `data.DATASETS`, `FILE_DATASETS`,
`TFDS_NAMES` and `NORMALIZATION` are views of it.

Adding a data set is one `register(DatasetEntry(...))`, e.g. a generated one:

    >>> catalog.register(catalog.DatasetEntry(
    ...     "stripes", image_shape=(16, 16, 1), class_names=("h", "v"), reader=make_stripes))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from jaxnets.data.embedded import load_digits, load_synthetic
from jaxnets.data.errors import DataError
from jaxnets.registry import Registry

Reader = Callable[..., tuple[np.ndarray, np.ndarray, tuple[str, ...]]]
Normalization = tuple[tuple[float, ...], tuple[float, ...]]

DIGIT_CLASSES = tuple(str(i) for i in range(10))
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
# CIFAR-100's names come with its files (meta / fine_label_names.txt); without them, the indices.
CIFAR100_CLASSES = tuple(str(i) for i in range(100))


@dataclasses.dataclass(frozen=True)
class FileLayout:
    """Where a data set's standard files lie in a data folder, and their format.

    Attributes:
      format: 'idx' (MNIST-style `{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`),
        'cifar10' or 'cifar100' (the binary or python batches).
      folders: sub-folders of the data folder searched, in order ('' is the
        folder itself); for the CIFAR formats the standard folder names are fixed.
      examples: (train, test) examples of the published files, checked on
        every read unless the caller opts out (`strict=False`); None: unchecked.
    """

    format: str
    folders: tuple[str, ...] = ("",)
    examples: tuple[int, int] | None = None


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
    """One data set name.

    Attributes:
      name: what `data.load(name)` and `--dataset` take.
      image_shape: `(H, W, C)` of every example; None when it depends on the
        data (an image folder, the synthetic set's `shape` option).
      class_names: label `i` is `class_names[i]`; None when read from the data.
      normalization: per-channel `(mean, std)` of the training images on
        [0, 1]; None: computed from the training images of the run.
      files: its standard files on disk (None: it has none).
      tfds_name: its tensorflow-datasets name (None: not in tfds).
      reader: `reader(split, **options) -> (images uint8 [N, H, W, C],
        labels int32 [N], class names)` for a data set that needs no files
        (embedded or generated); None for data read from disk or tfds.
      takes_options: `load(name, **options)` passes options to `reader`.
      folder_only: read only as an image folder (the 'folder' data set).
      folder_names_must_match: read from an image folder, the (sorted) class
        folder names must be `class_names` exactly (otherwise only their number).
      description: one line for help texts.
    """

    name: str
    image_shape: tuple[int, int, int] | None = None
    class_names: tuple[str, ...] | None = None
    normalization: Normalization | None = None
    files: FileLayout | None = None
    tfds_name: str | None = None
    reader: Reader | None = None
    takes_options: bool = False
    folder_only: bool = False
    folder_names_must_match: bool = False
    description: str = ""

    @property
    def num_classes(self) -> int | None:
        return None if self.class_names is None else len(self.class_names)


_CATALOG: Registry = Registry("data set", DataError)
register = _CATALOG.register
unregister = _CATALOG.unregister
names = _CATALOG.names
entries = _CATALOG.entries
get = _CATALOG.get


def with_files() -> tuple[str, ...]:
    """The names with standard files on disk (`FILE_DATASETS`)."""
    return tuple(e.name for e in _CATALOG.entries() if e.files is not None)


def tfds_names() -> dict[str, str]:
    """name -> tensorflow-datasets name, for those in tfds (`TFDS_NAMES`)."""
    return {e.name: e.tfds_name for e in _CATALOG.entries() if e.tfds_name is not None}


def normalizations() -> dict[str, Normalization]:
    """name -> tabled (mean, std), for those with one (`NORMALIZATION`)."""
    return {e.name: e.normalization for e in _CATALOG.entries() if e.normalization is not None}


for _entry in (
    DatasetEntry("digits", (28, 28, 1), DIGIT_CLASSES, reader=load_digits,
                 description="scikit-learn's 1,797 real 8x8 digits framed as 28x28 (embedded, no download)"),
    DatasetEntry("mnist", (28, 28, 1), DIGIT_CLASSES, ((0.1307,), (0.3081,)),
                 FileLayout("idx", ("", "MNIST/raw", "mnist"), (60_000, 10_000)), "mnist",
                 description="MNIST handwritten digits"),
    DatasetEntry("fashion_mnist", (28, 28, 1), FASHION_MNIST_CLASSES, ((0.2860,), (0.3530,)),
                 FileLayout("idx", ("", "FashionMNIST/raw", "fashion_mnist"), (60_000, 10_000)), "fashion_mnist",
                 description="Fashion-MNIST"),
    DatasetEntry("cifar10", (32, 32, 3), CIFAR10_CLASSES, ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
                 FileLayout("cifar10", examples=(50_000, 10_000)), "cifar10", folder_names_must_match=True,
                 description="CIFAR-10"),
    DatasetEntry("cifar100", (32, 32, 3), CIFAR100_CLASSES, ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
                 FileLayout("cifar100", examples=(50_000, 10_000)), "cifar100",
                 description="CIFAR-100 (fine labels)"),
    DatasetEntry("synthetic", reader=load_synthetic, takes_options=True,
                 description="seeded class prototypes + noise, any shape (options: shape, num_examples, "
                             "num_classes, seed)"),
    DatasetEntry("folder", folder_only=True, description="any image folder <dir>/[train|test/]<class>/<image>"),
):
    register(_entry)
del _entry

__all__ = ["CIFAR10_CLASSES", "CIFAR100_CLASSES", "DIGIT_CLASSES", "DatasetEntry", "FASHION_MNIST_CLASSES",
           "FileLayout", "entries", "get", "names", "normalizations", "register", "tfds_names", "unregister",
           "with_files"]
