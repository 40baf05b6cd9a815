"""The orbax helpers jaxnets' run checkpoints and saved models share: restore targets, the arrays' checksum,
and keeping orbax's own logs and abandoned reads out of jaxnets' one-line errors."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import sys
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

#: The checksum's name, stored beside its value (a new algorithm gets a new name).
CHECKSUM_ALGORITHM = "sha256-of-arrays/1"


def abstract(tree: Any) -> Any:
    """`tree` as shapes and dtypes (`jax.ShapeDtypeStruct`s): the target orbax restores against."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def arrays_checksum(tree: Any) -> str:
    """SHA-256 over every leaf's key path, dtype, shape and bytes (host copies), in pytree order."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        value = np.ascontiguousarray(jax.device_get(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}|{value.dtype.str}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _is_orbax_read(unraisable: Any) -> bool:
    """Whether an unraisable exception is the echo of an abandoned orbax read.

    Either one of orbax's read coroutines finalised with an error, or a
    callback of its (already closed) asyncio loop.
    """
    code = getattr(unraisable.object, "cr_code", None)
    if code is not None and "orbax" in code.co_filename:
        return True
    return isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"


@contextlib.contextmanager
def quiet_abandoned_reads():
    """Drop Python's reports of the read coroutines orbax abandons when a restore fails.

    When one shard of a checkpoint cannot be read, orbax gives up on the
    others' read coroutines, and Python prints each as "Exception ignored in:
    <coroutine ...>" (or its closed event loop's callbacks raise) with a
    traceback whenever it is finalised, during the restore or later. The
    `CheckpointError` raised for the restore already says the checkpoint is
    unreadable; these are its echoes. Reports of anything else pass through;
    the coroutines are collected before leaving.
    """
    previous = sys.unraisablehook

    def hook(unraisable):
        if not _is_orbax_read(unraisable):
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        gc.collect()
        sys.unraisablehook = previous


@contextlib.contextmanager
def quiet_orbax_logs():
    """Orbax logs every failed background write with a traceback; our exception already says it in one line."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
