"""Errors raised by `jaxnets.data`, each naming the file or data set at fault."""


class DataError(ValueError):
    """Base class: bad data or a bad request for data."""


class DataNotFound(DataError, FileNotFoundError):
    """A data set is neither on disk nor obtainable (offline)."""


class CorruptDataFile(DataError):
    """A data file is truncated or not in the format its name promises."""


class UnsafePickle(CorruptDataFile):
    """A pickle asked to build an object that CIFAR files never contain."""
