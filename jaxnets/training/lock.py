"""One process at a time owns a run folder: `RunLock`, and `probe_writable` to fail early on an unusable one."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
import tempfile
from pathlib import Path

import filelock

from jaxnets.errors import describe
from jaxnets.models.saving import CheckpointError
from jaxnets.paths import expand_path
from jaxnets.report import atomic_write_text


class RunLocked(CheckpointError):
    """Another live process owns the run folder."""


class WorkdirNotWritable(CheckpointError):
    """The run folder cannot be written (read-only, a file in the way, disk full)."""


class RunLock:
    """Exclusive ownership of a run folder by one process.

    The lock itself is `filelock.FileLock` on `workdir/.lock` (an OS `flock`,
    which the kernel drops when its process dies, even under `kill -9`; on
    file systems without `flock`, filelock's own pid/host-stamped soft lock).
    Beside it, `workdir/.lock-holder.json` records the holder's pid, host,
    start time and command line, to name it in errors and to report a stale
    holder (one whose process is gone) when its lock is taken over.
    """

    def __init__(self, workdir: str | Path):
        self.workdir = expand_path(workdir).absolute()
        self.lock_path = self.workdir / ".lock"
        self.holder_path = self.workdir / ".lock-holder.json"
        self._lock = filelock.FileLock(self.lock_path, timeout=0)
        self.previous_holder: dict | None = None

    def holder(self) -> dict | None:
        """What `.lock-holder.json` says (None when absent or unreadable)."""
        try:
            value = json.loads(self.holder_path.read_text())
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def acquire(self) -> RunLock:
        """Take the folder, or raise.

        Raises:
          RunLocked: a live process holds it (the message names its pid, host and command).
          WorkdirNotWritable: the folder cannot be created or written.
        """
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
        except filelock.Timeout:
            holder = self.holder() or {}
            who = (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}: "
                   f"{holder.get('command')}") if holder else "another process"
            raise RunLocked(f"{self.workdir} is in use by another run ({who}). Wait for it to finish, or choose "
                            "another workdir (--workdir).") from None
        except OSError as err:
            raise WorkdirNotWritable(f"cannot use {self.workdir} as a run folder: {describe(err)}. "
                                     "Choose a writable workdir (--workdir).") from err
        previous = self.holder()
        here = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv)}
        if previous and (previous.get("pid"), previous.get("host")) != (here["pid"], here["host"]):
            # The OS lock was free, so its last holder is gone (killed, or it crashed) and left this file behind.
            self.previous_holder = previous
        try:
            atomic_write_text(self.holder_path, json.dumps(here, indent=2))
        except OSError as err:
            self._lock.release()
            raise WorkdirNotWritable(f"cannot write to {self.workdir}: {describe(err)}. "
                                     "Choose a writable workdir (--workdir).") from err
        return self

    def release(self) -> None:
        with contextlib.suppress(OSError):
            if (self.holder() or {}).get("pid") == os.getpid():
                self.holder_path.unlink()
        self._lock.release()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# The name `probe_writable` gives its short-lived file; another process of the same run may be probing at the moment
# a folder is listed, so listings of "is anything saved here" leave these files out.
WRITE_PROBE_PREFIX = ".write-probe-"


def probe_writable(folder: Path) -> None:
    """Create `folder` and write (then remove) a small file in it, so an unusable workdir fails before training.

    Raises:
      WorkdirNotWritable: read-only, a file where a folder should be, or no space left.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=WRITE_PROBE_PREFIX):
            pass
    except OSError as err:
        raise WorkdirNotWritable(f"cannot write to {folder}: {describe(err)}. "
                                 "Choose a writable workdir (--workdir).") from err
