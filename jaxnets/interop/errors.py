"""The errors `from_torch`, `to_torch` and `convert` raise for a checkpoint they cannot use."""

from __future__ import annotations


class TorchCheckpointError(ValueError):
    """A PyTorch checkpoint cannot be used: the base of every `from_torch` error."""


class StateDictMismatch(TorchCheckpointError):
    """A checkpoint is malformed or does not fit the requested architecture."""


class UnsafeCheckpoint(TorchCheckpointError):
    """A checkpoint file needs code execution to load; it was refused, not run."""


class AmbiguousMapping(StateDictMismatch):
    """A state_dict alone cannot say in which order two same-shaped layers run: pass the module or `mapping=`."""


class NonFiniteWeights(TorchCheckpointError):
    """A checkpoint holds NaN or Inf values."""
