"""Image folders as a data set: the layout torchvision's and tfds's `ImageFolder` read.

    <dir>/<class name>/<image>                 one split ('train')
    <dir>/train/<class name>/<image>           splits, when train/ or test/ exist
    <dir>/test/<class name>/<image>

Class index = position of the class folder's name in sorted order (as
torchvision does). Every non-hidden file under a class folder (sub-folders
included) must be an image Pillow decodes; images become uint8 NHWC, RGB
(C=3), or grayscale (C=1) when every image is. A data set has one image
size: pass `image_size` to resize all images to it, otherwise an image whose
size differs from the others is an error that names it. The decoded split is
cached as .npz (beside the data, else in the user cache dir), keyed by the
file names, sizes and modification times and the requested size, so the
second load reads one file.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from jaxnets.data import cache as npz_cache
from jaxnets.paths import expand_path
from jaxnets.data.errors import CorruptDataFile, DataError, DataNotFound

SPLIT_FOLDERS = ("train", "test")
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_CACHE_VERSION = "folder-v1"  # bump when decoding changes, so old caches are not reused
_CHUNK = 256  # images per thread task


def has_split_folders(data_dir: str | os.PathLike) -> bool:
    """Whether `data_dir` holds `train/` or `test/` class trees."""
    data_dir = expand_path(data_dir)
    return any((data_dir / s).is_dir() for s in SPLIT_FOLDERS)


def split_root(data_dir: str | os.PathLike, split: str) -> Path:
    """The folder whose sub-folders are the classes of `split`.

    Raises:
      DataNotFound: `data_dir` is missing, or has split folders but not `split`,
        or has none and `split` is not 'train'.
    """
    data_dir = expand_path(data_dir)
    if not data_dir.is_dir():
        raise DataNotFound(f"image folder {data_dir} does not exist; expected <dir>/<class name>/<image> or "
                           "<dir>/train/<class name>/<image>")
    if has_split_folders(data_dir):
        if not (data_dir / split).is_dir():
            raise DataNotFound(f"image folder {data_dir} has no {split}/ folder (it has "
                               f"{', '.join(s + '/' for s in SPLIT_FOLDERS if (data_dir / s).is_dir())})")
        return data_dir / split
    if split != "train":
        raise DataNotFound(f"image folder {data_dir} has no train/ or test/ folders, so it is one 'train' split; "
                           f"there is no {split!r} split (hold some out with train_val_split)")
    return data_dir


def list_images(root: Path) -> tuple[list[str], np.ndarray, tuple[str, ...], str]:
    """The files of an image-folder split, in class then name order.

    Returns:
      (paths, labels int32 `[N]`, sorted class names, fingerprint of names, sizes, mtimes).

    Raises:
      DataNotFound: `root` has no class folders.
      DataError: a class folder holds no files.
    """
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataNotFound(f"image folder {root} has no class folders: expected {root}/<class name>/<image>")
    paths: list[str] = []
    labels: list[int] = []
    records: list[str] = []
    for index, name in enumerate(classes):
        found = _scan(os.path.join(root, name), name, records)
        if not found:
            raise DataError(f"class folder {root / name} holds no images; remove it or add its images")
        paths.extend(found)
        labels.extend([index] * len(found))
    digest = hashlib.sha1(_CACHE_VERSION.encode())
    digest.update("\n".join(records).encode())
    return paths, np.asarray(labels, np.int32), tuple(classes), digest.hexdigest()


def _scan(folder: str, relative: str, records: list[str]) -> list[str]:
    """Non-hidden files under `folder` (recursively, sorted); appends 'relpath:size:mtime' to `records`."""
    found: list[str] = []
    entries = sorted((e for e in os.scandir(folder) if not e.name.startswith(".")), key=lambda e: e.name)
    for entry in entries:
        if entry.is_dir():
            found.extend(_scan(entry.path, f"{relative}/{entry.name}", records))
        else:
            stat = entry.stat()
            records.append(f"{relative}/{entry.name}:{stat.st_size}:{stat.st_mtime_ns}")
            found.append(entry.path)
    return found


def decode_image(path: str, image_size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode one image with Pillow to uint8 `[H, W]` (grayscale) or `[H, W, 3]` (RGB).

    `image_size` (height, width) resizes with bilinear filtering (antialiased
    when shrinking, as torchvision's `Resize`).

    Raises:
      CorruptDataFile: not an image Pillow can decode (the file is named).
    """
    from PIL import Image  # noqa: PLC0415 - Pillow comes with matplotlib; only this path needs it

    try:
        with Image.open(path) as img:
            if img.mode in _GRAY_MODES:
                img = img.convert("L")
            elif img.mode != "RGB":
                # Palette images with transparency go through RGBA (Pillow warns otherwise).
                img = img.convert("RGBA").convert("RGB") if "transparency" in img.info else img.convert("RGB")
            else:
                img.load()
            if image_size is not None and img.size != (image_size[1], image_size[0]):
                img = img.resize((image_size[1], image_size[0]), Image.Resampling.BILINEAR)
            return np.asarray(img, np.uint8)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as err:
        raise CorruptDataFile(f"{path}: not an image Pillow can decode ({type(err).__name__}: {err}); delete it or "
                              "move it out of the class folder") from err


def _decode_chunk(paths: list[str], image_size) -> list[np.ndarray]:
    return [decode_image(p, image_size) for p in paths]


def _stack(paths: list[str], arrays: list[np.ndarray], root: Path) -> np.ndarray:
    sizes = collections.Counter(a.shape[:2] for a in arrays)
    if len(sizes) > 1:
        (common, count), = sizes.most_common(1)
        odd = [p for p, a in zip(paths, arrays) if a.shape[:2] != common]
        h, w = next(a.shape[:2] for a in arrays if a.shape[:2] != common)
        raise DataError(
            f"{odd[0]}: {h}x{w} pixels (height x width), but {count} of the {len(arrays)} images in {root} are "
            f"{common[0]}x{common[1]}{f' ({len(odd)} odd-sized files)' if len(odd) > 1 else ''}; pass "
            f"image_size=({common[0]}, {common[1]}) to resize every image to one size, or remove the odd file")
    if any(a.ndim == 3 for a in arrays):  # any colour image: the whole set is RGB
        arrays = [a if a.ndim == 3 else np.repeat(a[..., None], 3, axis=-1) for a in arrays]
    else:
        arrays = [a[..., None] for a in arrays]
    return np.stack(arrays)


def load_folder(data_dir: str | os.PathLike, split: str = "train", *, image_size: int | tuple[int, int] | None = None,
                name: str = "folder", cache: bool = True, progress: bool = True, workers: int | None = None):
    """Decode an image-folder split (or read its cache).

    Args:
      data_dir: the folder (`~` and `$VARS` expand), laid out as in the module docstring.
      split: 'train' or 'test'.
      image_size: resize every image to (height, width) (an int means square);
        None keeps the size, which must then be the same for all images.
      name: the data set's name, part of the cache file name.
      cache: read / write the .npz cache.
      progress: tqdm bar while decoding.
      workers: decoding threads (Pillow releases the GIL); default min(8, cores).

    Returns:
      (images uint8 `[N, H, W, C]`, labels int32 `[N]`, class names in index order).

    Raises:
      DataNotFound: no such folder or split, or no class folders.
      DataError: an empty class folder, or images of different sizes without `image_size`.
      CorruptDataFile: a file that is not a decodable image (named).
    """
    data_dir = expand_path(data_dir)
    root = split_root(data_dir, split)
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    if image_size is not None:
        image_size = (int(image_size[0]), int(image_size[1]))
        if min(image_size) < 1:
            raise DataError(f"image_size must be positive (height, width); got {image_size}")
    paths, labels, classes, fingerprint = list_images(root)
    key = hashlib.sha1(f"{fingerprint}|{image_size}".encode()).hexdigest()[:12]
    filename = f".jaxnets-{name}-folder-{split}-{key}.npz"
    candidates = npz_cache.locations(filename, data_dir) if cache else []
    cached = npz_cache.read_cache(candidates)
    if cached is not None and len(cached[1]) == len(labels):
        return cached
    chunks = [paths[i:i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
    arrays: list[np.ndarray] = []
    pool = concurrent.futures.ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1))
    try:
        with tqdm(total=len(paths), desc=f"decode {root}", unit=" img", disable=not progress, leave=False) as bar:
            for decoded in pool.map(_decode_chunk, chunks, [image_size] * len(chunks)):
                arrays.extend(decoded)
                bar.update(len(decoded))
    finally:
        pool.shutdown(cancel_futures=True)  # on an error, do not decode the rest first
    images = _stack(paths, arrays, root)
    npz_cache.write_cache(candidates, images, labels, classes)
    return images, labels, classes


__all__ = ["SPLIT_FOLDERS", "decode_image", "has_split_folders", "list_images", "load_folder", "split_root"]
