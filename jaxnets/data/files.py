"""Readers for the standard on-disk formats, with an .npz cache beside the data.

Formats (the files torchvision and tfds download):
  * MNIST / Fashion-MNIST IDX: `{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`,
    directly in `data_dir`, in `data_dir/MNIST/raw/` (torchvision) or
    `data_dir/FashionMNIST/raw/`.
  * CIFAR-10 binary: `cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin`
    (1 label byte + 3072 pixel bytes, channel-major, per record).
  * CIFAR-100 binary: `cifar-100-binary/{train,test}.bin` (coarse, fine label bytes).
  * CIFAR-10/100 python: `cifar-10-batches-py/`, `cifar-100-python/` pickles,
    read with a restricted unpickler that only builds numpy arrays and the
    plain containers CIFAR uses, so a hostile file cannot run code.

Each split is read from its standard file names only (never a glob), and is
checked against the published layout: every file present (`data_batch_1` to
`_5` for CIFAR-10) and the published number of examples (the catalog's
`FileLayout.examples`: 60,000 / 10,000 for MNIST-style IDX, 50,000 / 10,000
for CIFAR-10 and -100). A missing file or another count is a `DataError`
naming what is missing, unless the caller opts out with `strict=False`
(`data.load(..., strict=False)`, `$JAXNETS_DATA_STRICT=0`,
`jaxnets-train --no-strict-data`) for data trimmed on purpose. A file in
the folder named like a batch but not a standard one (`data_batch_6.bin`,
`data_batch_1 (copy).bin`) is an error either way: it would never be read.
IDX images and labels are each found compressed (`.gz`) or not.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import math
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np

from jaxnets.data import cache, catalog
from jaxnets.data.catalog import CIFAR10_CLASSES, FASHION_MNIST_CLASSES  # noqa: F401 - re-exported
from jaxnets.data.errors import CorruptDataFile, DataError, DataNotFound, UnsafePickle, check_labels
from jaxnets.paths import expand_path

_CACHE_VERSION = "v3"  # bump when what a cache may hold changes: caches of another version are not read
STRICT_ENV = "JAXNETS_DATA_STRICT"  # '0': accept trimmed standard files (what strict=None means)
_OPT_OUT = f"pass strict=False to data.load (jaxnets-train --no-strict-data, or set {STRICT_ENV}=0)"
_IDX_IMAGE_SIZE = (28, 28)  # MNIST and Fashion-MNIST
_MAX_EXAMPLES = 10_000_000  # a header promising more is not a data set of this kind
_IDX_PREFIX = {"train": "train", "test": "t10k"}


# --------------------------------------------------------------------------- IDX

def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) of unsigned bytes.

    Returns:
      uint8 array of the stored shape, e.g. `[N, 28, 28]` or `[N]`.

    Raises:
      CorruptDataFile: unreadable (including a corrupt gzip/deflate stream),
        bad magic number, or a size other than the header promises.
    """
    try:
        raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise CorruptDataFile(f"{path}: cannot read ({type(err).__name__}: {err}); "
                              "delete it and fetch it again") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise CorruptDataFile(f"{path}: not an IDX file of unsigned bytes (magic {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CorruptDataFile(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + math.prod(shape)  # Python ints: a hostile header cannot overflow this
    if len(raw) != expected:
        raise CorruptDataFile(f"{path}: {len(raw)} bytes, but its header promises shape {shape} ({expected} bytes); "
                              "the file is truncated or corrupt")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _find_idx(layout: catalog.FileLayout, split: str, data_dir: Path) -> tuple[Path, Path] | None:
    """The images and labels files of `split` in the first of `layout.folders` holding both, each uncompressed
    (preferred: torchvision keeps both) or `.gz`."""
    prefix = _IDX_PREFIX[split]
    for sub in layout.folders:
        folder = data_dir / sub
        found = [next((p for p in (folder / base, folder / f"{base}.gz") if p.is_file()), None)
                 for base in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")]
        if all(found):
            return found[0], found[1]
    return None


def _load_idx(entry: catalog.DatasetEntry, paths: list[Path]) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    name = entry.name
    images_path, labels_path = paths
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != _IDX_IMAGE_SIZE or not 0 < len(images) <= _MAX_EXAMPLES:
        raise CorruptDataFile(f"{images_path}: header says images of shape {images.shape}; {name} images are "
                              f"[N, {_IDX_IMAGE_SIZE[0]}, {_IDX_IMAGE_SIZE[1]}]: not a {name} image file")
    if labels.ndim != 1:
        raise CorruptDataFile(f"{labels_path}: header says shape {labels.shape}; a label file is one-dimensional")
    if len(images) != len(labels):
        raise CorruptDataFile(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} "
                              "labels; one of them is from another data set or corrupt")
    classes = entry.class_names
    labels = labels.astype(np.int32)
    check_labels(labels, len(classes), labels_path)
    return images[..., None], labels, classes


# --------------------------------------------------------------------- CIFAR binary

def read_cifar_binary(path: Path, label_bytes: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR binary batch.

    Args:
      path: a `.bin` file of records `label_bytes` label bytes + 3072 pixel bytes.
      label_bytes: 1 for CIFAR-10; 2 for CIFAR-100 (coarse, fine; fine is kept).

    Returns:
      images uint8 `[N, 32, 32, 3]` (NHWC) and labels int32 `[N]`.

    Raises:
      CorruptDataFile: not whole records, or a label out of range (named).
    """
    record = label_bytes + 3072
    raw = np.fromfile(path, np.uint8)
    if raw.size == 0 or raw.size % record:
        raise CorruptDataFile(f"{path}: {raw.size} bytes is not a whole number of {record}-byte CIFAR records; "
                              "the file is truncated or corrupt")
    raw = raw.reshape(-1, record)
    if label_bytes == 2:
        check_labels(raw[:, 0].astype(np.int32), 20, path)  # CIFAR-100's coarse label
    labels = raw[:, label_bytes - 1].astype(np.int32)
    check_labels(labels, 10 if label_bytes == 1 else 100, path)
    images = raw[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _read_lines(path: Path) -> tuple[str, ...]:
    return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())


_CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))

# (folder, {split: its files, in order}, class-names file) of each CIFAR format, as the archives unpack
_CIFAR_LAYOUTS = {
    ("cifar10", "cifar-binary"): ("cifar-10-batches-bin", {"train": tuple(f"{f}.bin" for f in _CIFAR10_TRAIN),
                                                           "test": ("test_batch.bin",)}, "batches.meta.txt"),
    ("cifar100", "cifar-binary"): ("cifar-100-binary", {"train": ("train.bin",), "test": ("test.bin",)},
                                   "fine_label_names.txt"),
    ("cifar10", "cifar-python"): ("cifar-10-batches-py", {"train": _CIFAR10_TRAIN, "test": ("test_batch",)},
                                  "batches.meta"),
    ("cifar100", "cifar-python"): ("cifar-100-python", {"train": ("train",), "test": ("test",)}, "meta"),
}


def _batch_stem(filename: str) -> str:
    """'data_batch_1.bin' -> 'data_batch', 'test.bin' -> 'test': what a copy or an extra batch is named like."""
    return filename.split(".")[0].rstrip("0123456789").rstrip("_")


def _cifar_files(name: str, kind: str, split: str, data_dir: Path) -> tuple[list[Path], list[str], Path]:
    """CIFAR `name`/`split` in format `kind` under `data_dir`: its standard files present, those missing, meta path.

    Raises:
      DataError: the folder holds a file named like one of the split's batches that is not a standard one
        (`data_batch_6.bin`, `data_batch_1 (copy).bin`): it would never be read.
    """
    folder_name, splits, meta = _CIFAR_LAYOUTS[name, kind]
    folder = data_dir / folder_name
    standard = splits[split]
    present = [folder / f for f in standard if (folder / f).is_file()]
    if not present:
        return [], list(standard), folder / meta
    known = {f for files in splits.values() for f in files} | {meta}
    stems = {_batch_stem(f) for f in standard}
    try:
        odd = sorted(e.name for e in os.scandir(folder) if not e.name.startswith(".") and e.name not in known
                     and any(e.name.startswith(stem) for stem in stems))
    except OSError:
        odd = []
    if odd:
        raise DataError(f"{folder} holds {', '.join(repr(f) for f in odd)}, not among the standard {split} files "
                        f"{', '.join(standard)} (the only ones read): move {'it' if len(odd) == 1 else 'them'} out "
                        "of the folder")
    return present, [f for f in standard if not (folder / f).is_file()], folder / meta


# --------------------------------------------------------------------- CIFAR python

_SAFE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # how protocol-2 pickles store bytes
    ("builtins", "bytes"),
    ("builtins", "bytearray"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path):
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str):
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickle(
            f"{self._path}: refusing to load: the pickle asks for {module}.{name}, which a CIFAR file never "
            "contains. It may be malicious; delete it and fetch the data set again."
        )


def load_restricted_pickle(path: Path):
    """Unpickle a CIFAR python-format file, allowing only numpy arrays and plain types.

    Raises:
      UnsafePickle: the file references any other global (e.g. `os.system`).
      CorruptDataFile: the file is not a readable pickle.
    """
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, path).load()
    except UnsafePickle:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise CorruptDataFile(f"{path}: not a readable CIFAR pickle ({type(err).__name__}: {err})") from err


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _get(batch: dict, key: str, path: Path):
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise CorruptDataFile(f"{path}: CIFAR pickle has no {key!r} entry")


def _load_cifar_python(entry: catalog.DatasetEntry, files: list[Path], meta: Path):
    name = entry.files.format
    label_key, names_key = ("labels", "label_names") if name == "cifar10" else ("fine_labels", "fine_label_names")
    images, labels = [], []
    for path in files:
        batch = load_restricted_pickle(path)
        if not isinstance(batch, dict):
            raise CorruptDataFile(f"{path}: expected a dict in the CIFAR pickle, got {type(batch).__name__}")
        try:
            data = np.asarray(_get(batch, "data", path), np.uint8)
            lab = np.asarray(_get(batch, label_key, path), np.int64)
        except (TypeError, ValueError, OverflowError) as err:
            raise CorruptDataFile(f"{path}: data or labels are not arrays of integers ({err})") from err
        if data.ndim != 2 or data.shape[1] != 3072 or lab.ndim != 1 or len(data) != len(lab):
            raise CorruptDataFile(f"{path}: data {data.shape} / labels {lab.shape} are not CIFAR records")
        check_labels(lab, entry.num_classes, path)
        lab = lab.astype(np.int32)
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(lab)
    classes = entry.class_names
    if meta.is_file():
        classes = _check_class_count(tuple(_text(c) for c in _get(load_restricted_pickle(meta), names_key, meta)),
                                     len(classes), meta)
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels), classes


def _check_class_count(classes: tuple[str, ...], expected: int, path: Path) -> tuple[str, ...]:
    if len(classes) != expected:
        raise CorruptDataFile(f"{path}: names {len(classes)} classes, the data set has {expected}; the file is corrupt")
    return classes


def _load_cifar_binary(entry: catalog.DatasetEntry, files: list[Path], meta: Path):
    parts = [read_cifar_binary(f, 1 if entry.files.format == "cifar10" else 2) for f in files]
    classes = entry.class_names
    if meta.is_file():
        classes = _check_class_count(_read_lines(meta), len(classes), meta)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), classes


# ------------------------------------------------------------------------ dispatch

@dataclasses.dataclass(frozen=True)
class Located:
    """The files of one split found in a data folder: what `read` decodes."""

    entry: catalog.DatasetEntry
    split: str
    data_dir: Path
    kind: str  # 'idx', 'cifar-binary' or 'cifar-python'
    paths: list[Path]  # the data files (IDX: images, labels)
    meta: Path | None  # the class-names file beside them (CIFAR), which may be absent
    missing: tuple[str, ...] = ()  # standard files of the split that are not there (CIFAR-10's batches)


def locate(name: str, split: str, data_dir: Path) -> Located | None:
    """The standard files of `name`/`split` in `data_dir` (already expanded), or None when it lacks them."""
    entry = catalog.get(name)
    if entry.files is None or not data_dir.is_dir():
        return None
    if entry.files.format == "idx":
        found = _find_idx(entry.files, split, data_dir)
        return None if found is None else Located(entry, split, data_dir, "idx", list(found), None)
    for kind in ("cifar-binary", "cifar-python"):
        paths, missing, meta = _cifar_files(entry.files.format, kind, split, data_dir)
        if paths:
            return Located(entry, split, data_dir, kind, paths, meta, tuple(missing))
    return None


def has_files(name: str, split: str, data_dir: Path | None) -> bool:
    """Whether `data_dir` holds `name`/`split` in a format we read."""
    return data_dir is not None and locate(name, split, expand_path(data_dir)) is not None


def expected_files(name: str, split: str) -> str:
    """Human-readable list of the files `load_files` looks for."""
    layout = catalog.get(name).files
    if layout is None:
        return "nothing: it has no standard files"
    if layout.format == "idx":
        p = _IDX_PREFIX[split]
        return (f"{p}-images-idx3-ubyte.gz and {p}-labels-idx1-ubyte.gz (each may be uncompressed, without .gz; "
                f"directly in the folder, or under "
                f"{' or '.join(d for d in layout.folders if d)}/)")
    return " or ".join(f"{folder}/ ({', '.join(splits[split])}; class names from {meta} if present)"
                       for (name, _), (folder, splits, meta) in _CIFAR_LAYOUTS.items() if name == layout.format)


def _cache_path(data_dir: Path, name: str, split: str, sources: list[Path]) -> list[Path]:
    """Candidate cache files: beside the data, then ~/.cache/jaxnets (read-only data dirs)."""
    digest = hashlib.sha1()
    for path in sources:  # the content, not the modification time: `rsync -t` / `tar x` keep a changed file's
        with open(path, "rb") as f:
            digest.update(f"{path.name}:".encode() + hashlib.file_digest(f, "blake2b").digest())
    fingerprint = digest.hexdigest()[:12]
    filename = f".jaxnets-{name}-{split}-{fingerprint}-{_CACHE_VERSION}.npz"
    return cache.locations(filename, data_dir)


def strict_default(strict: bool | None) -> bool:
    """`strict`, or when None: False if `$JAXNETS_DATA_STRICT` is '0' / 'false' / 'no', else True."""
    if strict is not None:
        return bool(strict)
    return os.environ.get(STRICT_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def check_layout(located: Located, num_examples: int | None = None) -> None:
    """Refuse a split that is not the published layout: a missing standard file, or another number of examples.

    Args:
      located: what `locate` found.
      num_examples: examples read (None: check the files only).

    Raises:
      DataError: naming what is missing or how many examples there are against the published count, and how
        to opt out (`strict=False`) for data trimmed on purpose.
    """
    entry, split = located.entry, located.split
    where = located.paths[0].parent
    if located.missing:
        raise DataError(f"{entry.name} ({split}) in {where} lacks {', '.join(located.missing)} of the published "
                        f"split's files (found only {', '.join(p.name for p in located.paths)}); fetch what is "
                        f"missing, or if you removed it on purpose {_OPT_OUT}")
    expected = (None if entry.files.examples is None
                else dict(zip(("train", "test"), entry.files.examples, strict=True))[split])
    if num_examples is not None and expected is not None and num_examples != expected:
        raise DataError(f"{entry.name} ({split}) in {where} holds {num_examples:,} examples "
                        f"({', '.join(p.name for p in located.paths)}); the published split has {expected:,}: "
                        f"a file is incomplete or not the published one. If you trimmed the data on purpose, "
                        f"{_OPT_OUT}")


def read(located: Located, use_cache: bool = True, strict: bool | None = None):
    """Decode the files `locate` found (through the .npz cache).

    Args:
      located: what `locate` found.
      use_cache: read / write the .npz cache (keyed on the files' contents).
      strict: refuse a split that is not the published layout (`check_layout`); None: `strict_default`.

    Returns:
      (images uint8 `[N, H, W, C]`, labels int32 `[N]`, class names).

    Raises:
      DataError: with `strict`, a missing standard file or another number of examples (`check_layout`).
      CorruptDataFile / UnsafePickle: a file is damaged or hostile (named).
    """
    strict = strict_default(strict)
    if strict:
        check_layout(located)
    entry, split = located.entry, located.split
    candidates = _cache_path(located.data_dir, entry.name, split, located.paths) if use_cache else []
    cached = cache.read_cache(candidates)
    if cached is not None:
        images, labels, classes = cached
    elif located.kind == "idx":
        images, labels, classes = _load_idx(entry, located.paths)
    elif located.kind == "cifar-binary":
        images, labels, classes = _load_cifar_binary(entry, located.paths, located.meta)
    else:
        images, labels, classes = _load_cifar_python(entry, located.paths, located.meta)
    if strict:
        check_layout(located, len(labels))
    if cached is None:
        cache.write_cache(candidates, images, labels, classes)
    return images, labels, classes


def load_files(name: str, split: str, data_dir: Path, cache: bool = True, strict: bool | None = None):
    """Load `name`/`split` from the standard files in `data_dir` (`locate`, then `read`).

    Returns:
      (images uint8 `[N, H, W, C]`, labels int32 `[N]`, class names).

    Raises:
      DataNotFound: the folder lacks the files (the message lists them).
      DataError: with `strict` (None: `strict_default`), not the published layout (`check_layout`); or a
        file named like a batch that is not a standard one.
      CorruptDataFile / UnsafePickle: a file is damaged or hostile (named).
    """
    data_dir = expand_path(data_dir)
    located = locate(name, split, data_dir)
    if located is None:
        raise DataNotFound(f"{name} ({split}) not found in {data_dir}: expected {expected_files(name, split)}")
    return read(located, use_cache=cache, strict=strict)


__all__ = ["CIFAR10_CLASSES", "Located", "STRICT_ENV", "check_labels", "check_layout", "expand_path", "expected_files",
           "has_files", "load_files", "load_restricted_pickle", "locate", "read", "read_cifar_binary", "read_idx",
           "strict_default"]
