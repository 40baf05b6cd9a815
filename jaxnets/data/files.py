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
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import math
import os
import pickle
import stat
import struct
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from jaxnets.data.errors import CorruptDataFile, DataNotFound, UnsafePickle

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")

_LOG = logging.getLogger(__name__)
_CACHE_VERSION = "v2"  # bump when what a cache may hold changes (v2: labels checked before caching)
_IDX_IMAGE_SIZE = (28, 28)  # MNIST and Fashion-MNIST
_MAX_EXAMPLES = 10_000_000  # a header promising more is not a data set of this kind

_IDX_DIRS = {"mnist": ("", "MNIST/raw", "mnist"), "fashion_mnist": ("", "FashionMNIST/raw", "fashion_mnist")}
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
        raise CorruptDataFile(f"{path}: cannot read ({type(err).__name__}: {err}); delete it and fetch it again") from err
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


def _find_idx(name: str, split: str, data_dir: Path) -> tuple[Path, Path] | None:
    prefix = _IDX_PREFIX[split]
    for sub in _IDX_DIRS[name]:
        folder = data_dir / sub
        for suffix in ("", ".gz"):
            images = folder / f"{prefix}-images-idx3-ubyte{suffix}"
            labels = folder / f"{prefix}-labels-idx1-ubyte{suffix}"
            if images.is_file() and labels.is_file():
                return images, labels
    return None


def _load_idx(name: str, split: str, data_dir: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], list[Path]]:
    found = _find_idx(name, split, data_dir)
    assert found is not None
    images_path, labels_path = found
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != _IDX_IMAGE_SIZE or not 0 < len(images) <= _MAX_EXAMPLES:
        raise CorruptDataFile(f"{images_path}: header says images of shape {images.shape}; {name} images are "
                              f"[N, {_IDX_IMAGE_SIZE[0]}, {_IDX_IMAGE_SIZE[1]}]: not a {name} image file")
    if labels.ndim != 1:
        raise CorruptDataFile(f"{labels_path}: header says shape {labels.shape}; a label file is one-dimensional")
    if len(images) != len(labels):
        raise CorruptDataFile(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} "
                              "labels; one of them is from another data set or corrupt")
    classes = FASHION_MNIST_CLASSES if name == "fashion_mnist" else tuple(str(i) for i in range(10))
    labels = labels.astype(np.int32)
    check_labels(labels, len(classes), labels_path)
    return images[..., None], labels, classes, [images_path, labels_path]


def check_labels(labels: np.ndarray, num_classes: int, path: Path) -> None:
    """Every label must be a class index in `[0, num_classes)`.

    Raises:
      CorruptDataFile: naming `path`, how many labels are out of range and the first one.
    """
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise CorruptDataFile(f"{path}: {bad.size} label(s) outside [0, {num_classes}), e.g. {int(labels[bad[0]])} "
                              f"at record {int(bad[0])}; the file is corrupt: delete it and fetch it again")


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


def _cifar_binary_files(name: str, split: str, data_dir: Path) -> tuple[list[Path], Path | None]:
    if name == "cifar10":
        folder = data_dir / "cifar-10-batches-bin"
        files = sorted(folder.glob("data_batch_*.bin")) if split == "train" else [folder / "test_batch.bin"]
        return [f for f in files if f.is_file()], folder / "batches.meta.txt"
    folder = data_dir / "cifar-100-binary"
    return [f for f in [folder / f"{split}.bin"] if f.is_file()], folder / "fine_label_names.txt"


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


def _cifar_python_files(name: str, split: str, data_dir: Path) -> tuple[list[Path], Path]:
    if name == "cifar10":
        folder = data_dir / "cifar-10-batches-py"
        files = sorted(folder.glob("data_batch_[0-9]*")) if split == "train" else [folder / "test_batch"]
        return [f for f in files if f.is_file()], folder / "batches.meta"
    folder = data_dir / "cifar-100-python"
    return [f for f in [folder / split] if f.is_file()], folder / "meta"


def _load_cifar_python(name: str, split: str, data_dir: Path):
    files, meta = _cifar_python_files(name, split, data_dir)
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
        check_labels(lab, 10 if name == "cifar10" else 100, path)
        lab = lab.astype(np.int32)
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(lab)
    classes = CIFAR10_CLASSES if name == "cifar10" else tuple(str(i) for i in range(100))
    if meta.is_file():
        classes = _check_class_count(tuple(_text(c) for c in _get(load_restricted_pickle(meta), names_key, meta)),
                                     len(classes), meta)
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels), classes, files


def _check_class_count(classes: tuple[str, ...], expected: int, path: Path) -> tuple[str, ...]:
    if len(classes) != expected:
        raise CorruptDataFile(f"{path}: names {len(classes)} classes, the data set has {expected}; the file is corrupt")
    return classes


def _load_cifar_binary(name: str, split: str, data_dir: Path):
    files, meta = _cifar_binary_files(name, split, data_dir)
    parts = [read_cifar_binary(f, 1 if name == "cifar10" else 2) for f in files]
    classes = CIFAR10_CLASSES if name == "cifar10" else tuple(str(i) for i in range(100))
    if meta is not None and meta.is_file():
        classes = _check_class_count(_read_lines(meta), len(classes), meta)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), classes, files


# ------------------------------------------------------------------------ dispatch

FILE_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100")


def has_files(name: str, split: str, data_dir: Path | None) -> bool:
    """Whether `data_dir` holds `name`/`split` in a format we read."""
    if data_dir is None or name not in FILE_DATASETS or not expand_path(data_dir).is_dir():
        return False
    data_dir = expand_path(data_dir)
    if name in _IDX_DIRS:
        return _find_idx(name, split, data_dir) is not None
    return bool(_cifar_binary_files(name, split, data_dir)[0] or _cifar_python_files(name, split, data_dir)[0])


def expected_files(name: str, split: str) -> str:
    """Human-readable list of the files `load_files` looks for."""
    if name in _IDX_DIRS:
        p = _IDX_PREFIX[split]
        return (f"{p}-images-idx3-ubyte.gz and {p}-labels-idx1-ubyte.gz (directly in the folder, or under "
                f"{' or '.join(d for d in _IDX_DIRS[name] if d)}/)")
    if name == "cifar10":
        return ("cifar-10-batches-bin/ (data_batch_1..5.bin, test_batch.bin, from cifar-10-binary.tar.gz) or "
                "cifar-10-batches-py/ (from cifar-10-python.tar.gz)")
    return "cifar-100-binary/ (train.bin, test.bin) or cifar-100-python/ (train, test, meta)"


def _cache_path(data_dir: Path, name: str, split: str, sources: list[Path]) -> list[Path]:
    """Candidate cache files: beside the data, then ~/.cache/jaxnets (read-only data dirs)."""
    fingerprint = hashlib.sha1(
        "|".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sources).encode()
    ).hexdigest()[:12]
    filename = f".jaxnets-{name}-{split}-{fingerprint}-{_CACHE_VERSION}.npz"
    return [data_dir / filename, user_cache_dir() / filename]


def _writable(folder: Path) -> bool:
    """Honour a folder's permission bits even as root (shared data is read-only)."""
    try:
        return bool(folder.stat().st_mode & stat.S_IWUSR) and os.access(folder, os.W_OK)
    except OSError:
        return True  # does not exist yet: mkdir decides


def _write_atomic_npz(path: Path, **arrays) -> bool:
    if not _writable(path.parent):
        return False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
            np.savez(tmp, **arrays)
        os.chmod(tmp.name, 0o644)
        os.replace(tmp.name, path)
        return True
    except OSError:
        try:
            os.unlink(tmp.name)  # type: ignore[possibly-undefined]
        except (OSError, NameError):
            pass
        return False


def load_files(name: str, split: str, data_dir: Path, cache: bool = True):
    """Load `name`/`split` from the standard files in `data_dir`.

    Returns:
      (images uint8 `[N, H, W, C]`, labels int32 `[N]`, class names).

    Raises:
      DataNotFound: the folder lacks the files (the message lists them).
      CorruptDataFile / UnsafePickle: a file is damaged or hostile (named).
    """
    data_dir = expand_path(data_dir)
    if not has_files(name, split, data_dir):
        raise DataNotFound(f"{name} ({split}) not found in {data_dir}: expected {expected_files(name, split)}")
    if name in _IDX_DIRS:
        sources = list(_find_idx(name, split, data_dir))  # type: ignore[arg-type]
    else:
        sources = _cifar_binary_files(name, split, data_dir)[0] or _cifar_python_files(name, split, data_dir)[0]
    candidates = _cache_path(data_dir, name, split, sources) if cache else []
    cached = read_cache(candidates)
    if cached is not None:
        return cached
    if name in _IDX_DIRS:
        images, labels, classes, _ = _load_idx(name, split, data_dir)
    elif _cifar_binary_files(name, split, data_dir)[0]:
        images, labels, classes, _ = _load_cifar_binary(name, split, data_dir)
    else:
        images, labels, classes, _ = _load_cifar_python(name, split, data_dir)
    write_cache(candidates, images, labels, classes)
    return images, labels, classes


def read_cache(candidates: list[Path]):
    """`(images, labels, classes)` from the first readable cache file, or None.

    A damaged cache (truncated, bit-flipped: zip CRCs catch both; or holding
    arrays of the wrong kind) is logged by name and deleted, so that the
    caller rebuilds it from the original files.
    """
    for candidate in candidates:
        if candidate.is_file():
            try:
                with open(candidate, "rb") as f, np.load(f, allow_pickle=False) as z:  # closed on every error
                    images, labels, classes = z["images"], z["labels"], tuple(str(c) for c in z["classes"])
                if images.dtype != np.uint8 or images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels):
                    raise ValueError(f"arrays of the wrong kind: images {images.dtype}{images.shape}, labels {labels.shape}")
                check_labels(labels, len(classes), candidate)
                return images, labels, classes
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as err:
                _LOG.warning("damaged data cache %s (%s: %s): deleting it; rebuilding it from the original files",
                             candidate, type(err).__name__, err)
                try:
                    candidate.unlink()
                except OSError:
                    pass  # a read-only cache folder: the rebuilt cache goes to the next candidate
    return None


def write_cache(candidates: list[Path], images: np.ndarray, labels: np.ndarray, classes) -> None:
    """Write the cache to the first writable candidate (atomically); silently skip if none is."""
    for candidate in candidates:
        if _write_atomic_npz(candidate, images=images, labels=labels, classes=np.asarray(classes)):
            return


def user_cache_dir() -> Path:
    """`$JAXNETS_CACHE`, else `~/.cache/jaxnets`: where caches go when the data folder is read-only."""
    return expand_path(os.environ.get("JAXNETS_CACHE", Path.home() / ".cache" / "jaxnets"))


def expand_path(path: str | os.PathLike) -> Path:
    """`path` with `~` and `$VARS` expanded, as a shell would (every path jaxnets.data accepts goes through it)."""
    return Path(os.path.expandvars(os.path.expanduser(os.fspath(path))))


__all__ = ["CIFAR10_CLASSES", "FILE_DATASETS", "check_labels", "expand_path", "expected_files", "has_files",
           "load_files", "load_restricted_pickle", "read_cache", "read_cifar_binary", "read_idx", "user_cache_dir",
           "write_cache"]
