"""Image folders as a data set: the layout torchvision's and tfds's `ImageFolder` read.

    <dir>/<class name>/<image>                 one split ('train')
    <dir>/train/<class name>/<image>           splits, when train/ or test/ exist
    <dir>/test/<class name>/<image>

Class index = position of the class folder's name in the sorted class
folders of the training split (as torchvision does for one folder), for
every split: a test/ folder with fewer classes is aligned by name (test/cat
keeps train/cat's index), and a test/ class that train/ lacks is an error
naming it, since a model trained on train/ cannot predict it. (With test/
alone, its own sorted folders are the classes.)

Every non-hidden file under a class folder (sub-folders and symlinks
followed) must be an image Pillow decodes; a symlink loop or a dangling
symlink is a one-line `DataError` naming it. Images become uint8 NHWC, RGB
(C=3), or grayscale (C=1) when every image is. Pixel depth is scaled, never
clipped: 8-bit modes (1, L, LA, P, RGB, RGBA, CMYK, ...) as Pillow converts
them (alpha dropped, no compositing); 16-bit grayscale (I;16*) as
round(v * 255 / 65535); 32-bit integer (I, what TIFF and older Pillow give
16-bit files) as 16-bit, refused when a value lies outside [0, 65535];
32-bit float (F) as round(v * 255) for v in [0, 1], refused outside it (or
NaN), since no range is declared for it. A data set has one image size:
pass `image_size` to resize all images to it, otherwise an image whose size
differs from the others is an error that names it.

The decoded split is cached as .npz (beside the data, else in the user
cache dir), keyed by the class list, every file's name and a BLAKE2b hash
of its bytes (so a file changed with its modification time kept, as
`rsync -t` or `tar x` do, is decoded again), and the requested size; the
second load reads the files once to hash them and decodes nothing.
`load_folder(cache=False)`, `data.load(cache=False)`, `$JAXNETS_DATA_CACHE=0`
or `jaxnets-train --no-cache` skip the cache.
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
from jaxnets.data.errors import CorruptDataFile, DataError, DataNotFound
from jaxnets.paths import expand_path

SPLIT_FOLDERS = ("train", "test")
_GRAY_8BIT_MODES = {"1", "L", "LA", "La"}
_CACHE_VERSION = "folder-v2"  # bump when decoding changes, so old caches are not reused
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


def split_classes(root: Path) -> tuple[str, ...]:
    """The sorted names of the (non-hidden) class folders in `root`.

    Raises:
      DataNotFound: `root` has no class folders.
    """
    try:
        classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    except OSError as err:
        raise DataError(f"cannot list image folder {root}: {err.strerror or err}") from None
    if not classes:
        raise DataNotFound(f"image folder {root} has no class folders: expected {root}/<class name>/<image>")
    return tuple(classes)


def class_index(data_dir: str | os.PathLike, split: str = "train") -> tuple[str, ...]:
    """The class list that indexes every split of `data_dir`: the training split's sorted class folders.

    Without a train/ folder (test/ alone, or no split folders) the split's own folders.

    Raises:
      DataNotFound: as `split_root`, or no class folders.
    """
    data_dir = expand_path(data_dir)
    if has_split_folders(data_dir) and (data_dir / "train").is_dir():
        return split_classes(data_dir / "train")
    return split_classes(split_root(data_dir, split))


def list_images(root: Path, classes: tuple[str, ...] | None = None
                ) -> tuple[list[str], np.ndarray, tuple[str, ...], str]:
    """The files of an image-folder split, in class then name order.

    Args:
      root: the split's folder (`<root>/<class name>/<image>`).
      classes: the class list labels index into (the training split's); None: `root`'s own sorted folders.
        `root`'s class folders must be among them (a subset is aligned by name).

    Returns:
      (paths, labels int32 `[N]`, `classes`, fingerprint of the classes, file names and contents).

    Raises:
      DataNotFound: `root` has no class folders.
      DataError: a class folder holds no files; `root` has a class folder not in `classes`; a symlink loop, a
        dangling symlink or an unreadable folder (named).
    """
    own = split_classes(root)
    classes = own if classes is None else tuple(classes)
    extra = [c for c in own if c not in classes]
    if extra:
        raise DataError(f"image folder {root} has class folder(s) {extra} that the training split does not have "
                        f"(its classes: {list(classes)}); a model trained on it cannot predict them: remove them "
                        "from this split or add them to train/")
    paths: list[str] = []
    labels: list[int] = []
    records: list[str] = ["classes:" + "/".join(classes)]
    for name in own:
        real = os.path.realpath(os.path.join(root, name))
        found = _scan(os.path.join(root, name), name, records, {real})
        if not found:
            raise DataError(f"class folder {root / name} holds no images; remove it or add its images")
        paths.extend(found)
        labels.extend([classes.index(name)] * len(found))
    digest = hashlib.blake2b(_CACHE_VERSION.encode(), digest_size=20)
    digest.update("\n".join(records).encode())
    _hash_files(digest, paths)
    return paths, np.asarray(labels, np.int32), classes, digest.hexdigest()


def _hash_files(digest, paths: list[str]) -> None:
    """Feed every file's length and bytes to `digest`, in order. (Sequential: CIFAR's 50,000 JPEGs hash in about
    1.4 s on one core; a thread pool was slower, since files this small never release the GIL in hashlib.)"""
    try:
        for path in paths:
            with open(path, "rb") as f:
                content = f.read()
            digest.update(len(content).to_bytes(8, "little"))
            digest.update(content)
    except OSError as err:
        raise DataError(f"cannot read {err.filename}: {err.strerror or err}") from None


def _scan(folder: str, relative: str, records: list[str], ancestors: set[str]) -> list[str]:
    """Non-hidden files under `folder` (recursively, following symlinks, sorted); appends their relative paths to
    `records`. `ancestors` are the real paths of the folders above, to catch a symlink that loops back."""
    found: list[str] = []
    try:
        entries = sorted((e for e in os.scandir(folder) if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as err:
        raise DataError(f"cannot list {folder}: {err.strerror or err}") from None
    for entry in entries:
        if entry.is_symlink() and not os.path.exists(entry.path):
            raise DataError(f"{entry.path} is a dangling symlink (to {os.readlink(entry.path)}, which does not "
                            "exist); remove it or restore its target")
        if entry.is_dir():
            real = os.path.realpath(entry.path)
            if real in ancestors:
                raise DataError(f"{entry.path} is a symlink loop (it leads back to {real}); remove the link")
            found.extend(_scan(entry.path, f"{relative}/{entry.name}", records, ancestors | {real}))
        else:
            records.append(f"{relative}/{entry.name}")
            found.append(entry.path)
    return found


def _to_8bit(img, path: str):
    """`img` as an 8-bit Pillow image, mode 'L' or 'RGB', scaled from its bit depth (module docstring)."""
    from PIL import Image

    mode = img.mode
    if mode in ("L", "RGB"):
        img.load()
        return img
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(img)
        if mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
            raise DataError(f"{path}: 32-bit integer pixels from {values.min()} to {values.max()}; only values in "
                            "[0, 65535] (16-bit) have a known scale: save it as 8- or 16-bit")
        scaled = (values.astype(np.uint32) * 255 + 32767) // 65535  # round(v * 255 / 65535)
        return Image.fromarray(scaled.astype(np.uint8), "L")
    if mode == "F":
        values = np.asarray(img, np.float32)
        if values.size and not (np.isfinite(values).all() and values.min() >= 0.0 and values.max() <= 1.0):
            raise DataError(f"{path}: floating-point pixels from {np.nanmin(values)} to {np.nanmax(values)}; float "
                            "images are read as [0, 1] and this one is outside it (or NaN): save it as 8- or 16-bit")
        return Image.fromarray(np.rint(values * 255.0).astype(np.uint8), "L")
    if mode in _GRAY_8BIT_MODES:
        return img.convert("L")
    # Palette images with transparency go through RGBA (Pillow warns otherwise); RGBA, CMYK, YCbCr, ... -> RGB.
    return img.convert("RGBA").convert("RGB") if "transparency" in img.info else img.convert("RGB")


def decode_image(path: str, image_size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode one image with Pillow to uint8 `[H, W]` (grayscale) or `[H, W, 3]` (RGB).

    Deeper pixels are scaled to 8 bits as the module docstring says (never
    clipped). `image_size` (height, width) resizes with bilinear filtering
    (antialiased when shrinking, as torchvision's `Resize`).

    Raises:
      CorruptDataFile: not an image Pillow can decode (the file is named).
      DataError: 32-bit integer pixels outside [0, 65535], or float pixels outside [0, 1] (named).
    """
    from PIL import Image  # Pillow comes with matplotlib; only this path needs it

    try:
        with Image.open(path) as img:
            img = _to_8bit(img, path)
            if image_size is not None and img.size != (image_size[1], image_size[0]):
                img = img.resize((image_size[1], image_size[0]), Image.Resampling.BILINEAR)
            return np.asarray(img, np.uint8)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as err:
        raise CorruptDataFile(f"{path}: not an image Pillow can decode ({type(err).__name__}: {err}); delete it or "
                              "move it out of the class folder") from err


def _decode_chunk(paths: list[str], image_size) -> list[np.ndarray]:
    return [decode_image(p, image_size) for p in paths]


def _stack(paths: list[str], arrays: list[np.ndarray], root: Path) -> np.ndarray:
    sizes = collections.Counter(a.shape[:2] for a in arrays)
    if len(sizes) > 1:
        (common, count), = sizes.most_common(1)
        odd = [p for p, a in zip(paths, arrays, strict=True) if a.shape[:2] != common]
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
      (images uint8 `[N, H, W, C]`, labels int32 `[N]`, class names in index order: the training split's, for
      every split).

    Raises:
      DataNotFound: no such folder or split, or no class folders.
      DataError: an empty class folder; a class folder the training split lacks; images of different sizes
        without `image_size`; a symlink loop or dangling symlink; pixels of no known scale.
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
    paths, labels, classes, fingerprint = list_images(root, class_index(data_dir, split))
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


__all__ = ["SPLIT_FOLDERS", "class_index", "decode_image", "has_split_folders", "list_images", "load_folder",
           "split_classes", "split_root"]
