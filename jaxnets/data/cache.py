"""The .npz cache of decoded splits, shared by every reader (files, image folders, tfds).

A split decoded once is kept as `images`, `labels`, `classes` in an .npz
file: beside the data when that folder is writable, else in
`user_cache_dir()`. A damaged cache is deleted and rebuilt, never trusted.
Every reader keys its cache file name on what the data files hold (their
contents, not their modification times). `$JAXNETS_DATA_CACHE=0` (or
`data.load(cache=False)`, `jaxnets-train --no-cache`) neither reads nor
writes any of them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from jaxnets.data.errors import check_labels
from jaxnets.paths import expand_path

_LOG = logging.getLogger(__name__)
CACHE_ENV = "JAXNETS_DATA_CACHE"  # '0': no .npz caches (what cache=None means)


def enabled(cache: bool | None = None) -> bool:
    """`cache`, or when None: False if `$JAXNETS_DATA_CACHE` is '0' / 'false' / 'no' / 'off', else True."""
    if cache is not None:
        return bool(cache)
    return os.environ.get(CACHE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def locations(filename: str, data_dir: Path | None) -> list[Path]:
    """Where the cache file `filename` may be: beside the data (when there is a folder), then `user_cache_dir()`."""
    return ([data_dir / filename] if data_dir is not None else []) + [user_cache_dir() / filename]


def _writable(folder: Path) -> bool:
    """Honour a folder's permission bits even as root (shared data is read-only)."""
    try:
        return bool(folder.stat().st_mode & stat.S_IWUSR) and os.access(folder, os.W_OK)
    except OSError:
        return True  # does not exist yet: mkdir decides


def _write_atomic_npz(path: Path, **arrays) -> bool:
    if not _writable(path.parent):
        return False
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
            tmp_name = tmp.name
            np.savez(tmp, **arrays)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
        return True
    except OSError:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
        return False


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
                    raise ValueError(f"arrays of the wrong kind: images {images.dtype}{images.shape}, "
                                     f"labels {labels.shape}")
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


__all__ = ["CACHE_ENV", "enabled", "locations", "read_cache", "user_cache_dir", "write_cache"]
