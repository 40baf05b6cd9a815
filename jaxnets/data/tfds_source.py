"""The tensorflow-datasets path, through `tfds.data_source` (array_record, no TensorFlow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from jaxnets.data import cache, catalog
from jaxnets.data.errors import DataNotFound
from jaxnets.errors import describe


def load_tfds(name: str, split: str, data_dir: Path | None = None, download: bool = True,
              use_cache: bool | None = None):
    """Read a whole split through `tfds.data_source` into memory (cached as .npz after the first read).

    Returns:
      images uint8 `[N, H, W, C]`, labels int32 `[N]`, class names.

    Args:
      name: a catalog name with a `tfds_name`.
      split: 'train' or 'test'.
      data_dir: tfds's data_dir (already expanded; None: tfds's default).
      download: let tfds download and prepare.
      use_cache: read / write the .npz cache; None: `cache.enabled()` (`$JAXNETS_DATA_CACHE`).

    Raises:
      DataNotFound: the data set has no tfds name, or is not prepared in `data_dir` and cannot be
        downloaded and prepared here (offline, or tfds lacks what it needs).
    """
    import tensorflow_datasets as tfds  # heavy import, only on this path

    tfds_name = catalog.get(name).tfds_name
    if tfds_name is None:
        raise DataNotFound(f"{name} is not a tensorflow-datasets data set")
    try:
        source = tfds.data_source(tfds_name, split=split, data_dir=data_dir, download=download)
        class_names = tuple(tfds.builder(tfds_name, data_dir=data_dir).info.features["label"].names)
    except Exception as err:  # tfds raises many unrelated types here; all mean "not available"
        where = data_dir or "~/tensorflow_datasets"
        raise DataNotFound(
            f"{name} ({split}) is not available through tensorflow-datasets in {where} "
            f"({describe(err)}). Offline, either put the "
            f"original files in a folder and pass data_dir=/--data-dir with source='files', or prepare it once "
            f"with internet access (tfds build {tfds_name} --file_format=array_record)."
        ) from err
    n = len(source)
    version = tfds.builder(tfds_name, data_dir=data_dir).info.version
    filename = f".jaxnets-tfds-{tfds_name}-{version}-{split}-{n}.npz"
    candidates = cache.locations(filename, Path(data_dir) if data_dir else None) if cache.enabled(use_cache) else []
    cached = cache.read_cache(candidates)
    if cached is not None:
        return cached
    first = source[0]
    images = np.empty((n, *np.shape(first["image"])), np.uint8)
    labels = np.empty((n,), np.int32)
    for i in tqdm(range(n), desc=f"tfds {tfds_name}:{split}", disable=n < 5000, leave=False):
        record = first if i == 0 else source[i]
        images[i] = record["image"]
        labels[i] = record["label"]
    cache.write_cache(candidates, images, labels, class_names)
    return images, labels, class_names
