"""The one rule for paths users give jaxnets: `~` and `$VARS` expand, as a shell would.

Every public function and command that takes a path (data folders, caches,
run folders, saved models, exports, PyTorch checkpoints, reports) passes it
through `expand_path` first, so `'~/runs/x'` means the same in Python as on
the command line.
"""

from __future__ import annotations

import os
from pathlib import Path


def expand_path(path: str | os.PathLike) -> Path:
    """`path` with `~` and `$VARS` (or `${VARS}`) expanded, as a `Path`; unset variables stay as written."""
    return Path(os.path.expandvars(os.path.expanduser(os.fspath(path))))


__all__ = ["expand_path"]
