"""Errors raised by `jaxnets.data`, each naming the file or data set at fault, and the label check that raises one."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class DataError(ValueError):
    """Base class: bad data or a bad request for data."""


class DataNotFound(DataError, FileNotFoundError):
    """A data set is neither on disk nor obtainable (offline)."""


class CorruptDataFile(DataError):
    """A data file is truncated or not in the format its name promises."""


class UnsafePickle(CorruptDataFile):
    """A pickle asked to build an object that CIFAR files never contain."""


def check_labels(labels: np.ndarray, num_classes: int, path: Path) -> None:
    """Every label must be a class index in `[0, num_classes)`.

    Raises:
      CorruptDataFile: naming `path`, how many labels are out of range and the first one.
    """
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise CorruptDataFile(f"{path}: {bad.size} label(s) outside [0, {num_classes}), e.g. {int(labels[bad[0]])} "
                              f"at record {int(bad[0])}; the file is corrupt: delete it and fetch it again")
