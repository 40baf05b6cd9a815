"""`load`: one split into memory from the first source that has it (files, image folder, tfds, download)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxnets.data import cache as npz_cache
from jaxnets.data import catalog, files
from jaxnets.data.catalog import DatasetEntry
from jaxnets.data.dataset import Dataset
from jaxnets.data.download import default_data_dir, download_files
from jaxnets.data.errors import DataError, DataNotFound
from jaxnets.data.files import expected_files
from jaxnets.data.folder import has_split_folders, load_folder
from jaxnets.data.tfds_source import load_tfds
from jaxnets.paths import expand_path

#: The splits `load` accepts.
SPLITS = ("train", "test")


#: Where `load` reads from; `auto` tries files, an image folder, tfds, then a download.
SOURCES = ("auto", "tfds", "files", "folder")


def available() -> tuple[str, ...]:
    """The data set names `load` accepts (the catalog's names)."""
    return catalog.names()


def load(name: str, split: str = "train", *, source: str = "auto", data_dir: str | Path | None = None,
         download: bool = True, mirror: str | None = None, image_size: int | tuple[int, int] | None = None,
         strict: bool | None = None, cache: bool | None = None, **options) -> Dataset:
    """Load a whole split into memory.

    Args:
      name: one of `available()` (the catalog, `jaxnets.data.catalog`): 'digits' (embedded, scikit-learn's real 8x8
        digits framed as 28x28), 'mnist', 'fashion_mnist', 'cifar10',
        'cifar100', 'synthetic' (seeded; `options` shape, num_examples,
        num_classes, seed), or 'folder' (any image folder in `data_dir`).
      split: 'train' or 'test'.
      source: 'files' (the standard files already in `data_dir`), 'folder'
        (an image folder in `data_dir`), 'tfds', or 'auto': the standard
        files in `data_dir` (default `default_data_dir()`), else an image
        folder with train/ or test/ in `data_dir`, else a prepared tfds data
        set, else (with `download`) the published files fetched into the
        data directory.
      data_dir: folder with the files or image folder, or tfds's data_dir;
        `~` and `$VARS` expand.
      download: with source 'auto', fetch the published files when nothing
        is on disk (needs internet or a mirror); with 'tfds', let tfds
        download and prepare.
      mirror: base URL to download from instead of the published ones
        (`<mirror>/<name>/<file>`); None: `$JAXNETS_DATA_MIRROR` when set;
        '': the published URLs.
      image_size: image folders only: resize every image to (height, width)
        (an int means square); None requires one size throughout.
      strict: the standard files must be the published layout: every file
        (CIFAR-10's five batches) and the published number of examples
        (`DatasetEntry.files.examples`); False accepts data trimmed on purpose.
        None: `$JAXNETS_DATA_STRICT` ('0' means False), else True.
      cache: read / write the decoded split's .npz cache (keyed on the files'
        contents). None: `$JAXNETS_DATA_CACHE` ('0' means False), else True.

    Returns:
      a `Dataset` with uint8 `[N, H, W, C]` images and int32 `[N]` labels.

    Raises:
      DataError: unknown name, split or source; standard files that are not
        the published layout (with `strict`; the message says how to opt
        out), or a file named like a batch that is not a standard one; an
        image folder whose classes do not fit `name`, whose split has a class
        the training split lacks, with an empty class folder, a symlink loop
        or dangling symlink, or images of different sizes (without
        `image_size`).
      DataNotFound: not on disk and not obtainable; says what to put where.
      CorruptDataFile / UnsafePickle / ChecksumMismatch: a damaged or hostile
        file, or a download with the wrong checksum (named; nothing kept).
    """
    entry = catalog.get(name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {SPLITS} (split 'train' further with train_val_split)")
    if source not in SOURCES:
        raise DataError(f"unknown source {source!r}; use one of {SOURCES}")
    if options and not entry.takes_options:
        raise DataError(f"{name} takes no options; got {sorted(options)}")
    folder = expand_path(data_dir) if data_dir is not None else None  # resolved once, used by every reader below
    strict, cache = files.strict_default(strict), npz_cache.enabled(cache)
    local = located = None
    use_folder = False
    if entry.reader is None:
        # The standard files, looked for once: in data_dir, or (source 'auto' without one) the download folder.
        local = folder if folder is not None else (default_data_dir() if source == "auto" else None)
        located = files.locate(name, split, local) if local is not None and source in ("auto", "files") else None
        use_folder = entry.folder_only or source == "folder" or (
            source == "auto" and entry.files is not None and folder is not None and located is None
            and has_split_folders(folder))
    if image_size is not None and not use_folder:
        raise DataError(f"image_size applies to image folders only; {name} from {source!r} has one image size")
    if entry.reader is not None:
        images, labels, classes = entry.reader(split, **options)
    elif use_folder:
        if folder is None:
            raise DataNotFound(f"{name} as an image folder needs data_dir: a folder laid out as <dir>/<class>/<image> "
                               "or <dir>/train/<class>/<image>")
        images, labels, classes = load_folder(folder, split, image_size=image_size, name=name, cache=cache)
        if not entry.folder_only:
            _check_folder_classes(entry, classes, folder)
    elif source == "files":
        if folder is None:
            raise DataNotFound(f"source='files' needs data_dir: a folder holding {expected_files(name, split)}")
        if located is None:
            raise DataNotFound(f"{name} ({split}) not found in {folder}: expected {expected_files(name, split)}")
        images, labels, classes = files.read(located, use_cache=cache, strict=strict)
    elif source == "tfds":
        images, labels, classes = load_tfds(name, split, folder, download=download, use_cache=cache)
    else:
        images, labels, classes = _load_auto(entry, split, folder, local, located, download, mirror, strict, cache)
    return Dataset(images, labels.astype(np.int32), tuple(classes), name, split)


def _load_auto(entry: DatasetEntry, split: str, data_dir: Path | None, local: Path, located: files.Located | None,
               allow_download: bool, mirror: str | None, strict: bool, cache: bool):
    """Files on disk (already `located` in `local`), else a prepared tfds data set, else the published files
    downloaded into `local`."""
    name = entry.name
    if located is not None:
        return files.read(located, use_cache=cache, strict=strict)
    tfds_error: Exception | None = None
    if entry.tfds_name is not None:
        try:
            return load_tfds(name, split, data_dir, download=False, use_cache=cache)
        except DataNotFound as err:
            tfds_error = err
    if not allow_download:
        raise DataNotFound(
            f"{name} ({split}) not found in {local} (files this loader reads: {expected_files(name, split)}) nor "
            f"prepared for tensorflow-datasets; pass download=True to fetch the published files, or put them "
            f"there.") from tfds_error
    download_files(name, split, local, mirror=mirror)
    return files.load_files(name, split, local, cache=cache, strict=strict)


def _check_folder_classes(entry: DatasetEntry, classes: tuple[str, ...], data_dir: Path) -> None:
    """A named data set read from an image folder keeps its label order (sorted names = CIFAR-10's order)."""
    if entry.folder_names_must_match and classes != entry.class_names:
        raise DataError(f"image folder {data_dir} has classes {list(classes)}, not {entry.description}'s "
                        f"{list(entry.class_names)}; load it as data set 'folder' instead")
    if entry.num_classes is not None and len(classes) != entry.num_classes:
        raise DataError(f"image folder {data_dir} has {len(classes)} class folders, but {entry.name} has "
                        f"{entry.num_classes}; load it as data set 'folder' instead")
