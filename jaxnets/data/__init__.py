"""Data sets from one place: tfds, the standard files on disk, or embedded.

    >>> from jaxnets import data
    >>> train = data.load("digits", "train")          # embedded, no download
    >>> train, val = data.train_val_split(train, 0.2, seed=0)
    >>> loader = data.Loader(train.images, train.labels, 128, train=True,
    ...                      preprocess=data.Preprocess.for_dataset("digits", train.images))
    >>> batch = next(iter(loader))                    # Batch(image, label, mask) on device

`load(name, split, source=...)` returns a `Dataset` of uint8 NHWC images and
int32 labels; `source='files'` reads MNIST IDX / CIFAR binary or python files
in `data_dir`, `'folder'` an image folder (`<dir>/[train|test/]<class>/<image>`),
`'tfds'` goes through `tfds.data_source`, and `'auto'` takes the first that
has the data: files, an image folder, a prepared tfds data set, and finally
downloads the published files (`jaxnets.data.download`, no TensorFlow) into
`data_dir` (default `~/.cache/jaxnets/data`). `~` and `$VARS` expand in every path.

The package's modules: `loading` (`load`), `dataset` (`Dataset` and its
splits), `catalog` (one entry per data set), `files`, `folder`,
`tfds_source`, `download` and `embedded` (the sources), `cache` (decoded
splits as .npz), `pipeline` (`Loader`, preprocessing, augmentation),
`synthetic`, `errors`.
"""

from jaxnets.data import catalog
from jaxnets.data.catalog import DatasetEntry, FileLayout, register
from jaxnets.data.dataset import Dataset, random_split, train_val_split
from jaxnets.data.download import (
    DOWNLOADABLE,
    MIRROR_ENV,
    ChecksumMismatch,
    DownloadTimeout,
    Timeouts,
    default_data_dir,
    download_files,
)
from jaxnets.data.errors import CorruptDataFile, DataError, DataNotFound, UnsafePickle
from jaxnets.data.files import load_files
from jaxnets.data.folder import load_folder
from jaxnets.data.loading import SOURCES, SPLITS, available, load
from jaxnets.data.pipeline import (
    RESIDENT_MAX_BYTES,
    Batch,
    Loader,
    Preprocess,
    channel_stats,
    keeps_data_on_device,
    preprocess,
    random_crop,
    random_flip,
)
from jaxnets.data.synthetic import synthetic_batch, synthetic_batches
from jaxnets.data.tfds_source import load_tfds
from jaxnets.paths import expand_path

# Views of the catalog, computed when read (so a registered entry shows up): the data set names, those with
# standard files, their tfds names, their tabled normalisation. The module `__getattr__` must live here.
_VIEWS = {"DATASETS": catalog.names, "FILE_DATASETS": catalog.with_files, "TFDS_NAMES": catalog.tfds_names,
          "NORMALIZATION": catalog.normalizations}


def __getattr__(name: str):
    if name in _VIEWS:
        return _VIEWS[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Batch", "ChecksumMismatch", "CorruptDataFile", "DATASETS", "DOWNLOADABLE", "DataError", "DataNotFound", "Dataset",
    "DatasetEntry", "DownloadTimeout", "FILE_DATASETS", "FileLayout", "Loader", "MIRROR_ENV", "NORMALIZATION",
    "Preprocess", "RESIDENT_MAX_BYTES", "SOURCES", "SPLITS", "TFDS_NAMES", "Timeouts", "UnsafePickle", "available",
    "catalog", "channel_stats", "default_data_dir", "download_files", "expand_path", "keeps_data_on_device", "load",
    "load_files", "load_folder", "load_tfds", "preprocess", "random_crop", "random_flip", "random_split", "register",
    "synthetic_batch", "synthetic_batches", "train_val_split",
]
