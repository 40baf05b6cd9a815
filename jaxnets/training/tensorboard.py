"""TensorBoard logs of a run, written with tensorboardX (no TensorFlow needed).

    >>> board = TensorBoard("runs/demo/tensorboard", config_json, history=[])
    >>> board.write_epoch(record)   # one history record of `fit`
    >>> board.close()

Open them with `pip install tensorboard && tensorboard --logdir runs/`.
Scalars, one point per epoch (the step axis is the epoch): `train/loss`,
`train/accuracy`, `held_out/loss`, `held_out/accuracy`, `test/accuracy`,
`learning_rate`, `images_per_second`; the run's config is logged as text.

The log is always the run's `history.json`, one point per epoch: opening a
`TensorBoard` replaces whatever event files the folder holds by one written
from the history so far (what a resumed run restored), so epochs a killed run
saved but never logged come back, and epochs it logged past the checkpoint it
resumes from are gone. Events are written synchronously and flushed after
every epoch (tensorboardX's `SummaryWriter` queues them for a background
thread, whose queue a killed process loses).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

# history key -> TensorBoard tag
SCALARS = {
    "train_loss": "train/loss",
    "train_acc": "train/accuracy",
    "val_loss": "held_out/loss",
    "val_acc": "held_out/accuracy",
    "test_acc": "test/accuracy",
    "lr": "learning_rate",
    "images_per_second": "images_per_second",
}
EVENT_FILE_GLOB = "events.out.tfevents.*"


def _import_tensorboardx():
    """tensorboardX's event writer, Event proto and summary builders, imported without PyTorch.

    tensorboardX's package `__init__` imports its `SummaryWriter`, which tries
    `import torch` at import time only to accept torch tensors as values;
    jaxnets logs Python floats and text. Where torch is installed (the `torch`
    extra) that import cost every `fit` 1-2 s. So, unless torch is already
    loaded, `import torch` is made to fail (tensorboardX's own fallback) for
    that one import, and is possible again afterwards.
    """
    block = "torch" not in sys.modules and "tensorboardX" not in sys.modules
    if block:
        sys.modules["torch"] = None  # type: ignore[assignment] # `import torch` raises ImportError
    try:
        from tensorboardX import summary  # only when logging
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event
    finally:
        if block:
            del sys.modules["torch"]
    return EventsWriter, Event, summary


def event_files(logdir: str | Path) -> list[Path]:
    """The TensorBoard event files directly in `logdir`, by name."""
    logdir = Path(logdir)
    return sorted(logdir.glob(EVENT_FILE_GLOB)) if logdir.is_dir() else []


class TensorBoard:
    """Per-epoch scalars and the config of one run, under `logdir`.

    Args:
      logdir: folder for the event files (created).
      config: the run's config as a JSON-able dict (logged once as text).
      history: the epochs already done (a resumed run's restored history):
        the folder's event files are replaced by one holding the config and
        one point per epoch of `history`.
    """

    def __init__(self, logdir: str | Path, config: dict, history: list[dict] = ()):
        EventsWriter, self._Event, self._summary = _import_tensorboardx()

        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        for stale in event_files(self.logdir):  # rebuilt from history below: the log is the history
            stale.unlink()
        self._writer = EventsWriter(str(self.logdir / "events"))
        text = self._summary.text("config", "```\n" + json.dumps(config, indent=2) + "\n```")
        self._write(text, 0)
        for record in history:
            self._write_record(record)
        self._writer.flush()

    def _write(self, summary, step: int) -> None:
        self._writer.write_event(self._Event(summary=summary, step=step, wall_time=time.time()))

    def _write_record(self, record: dict) -> None:
        for key, tag in SCALARS.items():
            value = record.get(key)
            if value is not None and math.isfinite(value):
                self._write(self._summary.scalar(tag, float(value)), int(record["epoch"]))

    def write_epoch(self, record: dict) -> None:
        """Log one `fit` history record (its `epoch` is the step) and flush; None and non-finite values are skipped."""
        self._write_record(record)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
