"""TensorBoard logs of a run, written with tensorboardX (no TensorFlow needed).

    >>> board = TensorBoard("runs/demo/tensorboard", config_json, start_epoch=0)
    >>> board.write_epoch(record)   # one history record of `fit`
    >>> board.close()

Open them with `pip install tensorboard && tensorboard --logdir runs/`.
Scalars, one point per epoch (the step axis is the epoch): `train/loss`,
`train/accuracy`, `held_out/loss`, `held_out/accuracy`, `test/accuracy`,
`learning_rate`, `images_per_second`; the run's config is logged as text.
A resumed run opens the writer with `purge_step`, so TensorBoard discards
whatever a killed run had logged past the checkpoint it resumes from.
"""

from __future__ import annotations

import json
import math
import sys
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


def summary_writer_class() -> type:
    """tensorboardX's `SummaryWriter`, imported without PyTorch.

    tensorboardX's writer module tries `import torch` at import time only to accept
    torch tensors as values; jaxnets logs Python floats and text. Where torch is
    installed (the `torch` extra) that import cost every `fit` 1-2 s. So, unless
    torch is already loaded, `import torch` is made to fail (tensorboardX's own
    fallback) for that one import, and is possible again afterwards.
    """
    if "torch" in sys.modules or "tensorboardX.writer" in sys.modules:
        from tensorboardX import SummaryWriter  # noqa: PLC0415 - only when logging

        return SummaryWriter
    sys.modules["torch"] = None  # type: ignore[assignment] # `import torch` raises ImportError
    try:
        from tensorboardX import SummaryWriter  # noqa: PLC0415 - only when logging
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class TensorBoard:
    """Per-epoch scalars and the config of one run, under `logdir`.

    Args:
      logdir: folder for the event files (created).
      config: the run's config as a JSON-able dict (logged once as text).
      start_epoch: epochs already done (resume): later events replace theirs.
    """

    def __init__(self, logdir: str | Path, config: dict, start_epoch: int = 0):
        SummaryWriter = summary_writer_class()  # noqa: N806 - a class

        self.logdir = Path(logdir)
        purge = {"purge_step": start_epoch + 1} if start_epoch else {}
        self._writer = SummaryWriter(str(self.logdir), **purge)
        if not start_epoch:
            self._writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", 0)

    def write_epoch(self, record: dict) -> None:
        """Log one `fit` history record (its `epoch` is the step); None and non-finite values are skipped."""
        for key, tag in SCALARS.items():
            value = record.get(key)
            if value is not None and math.isfinite(value):
                self._writer.add_scalar(tag, float(value), int(record["epoch"]))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
