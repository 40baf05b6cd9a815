"""Training: TrainState, pure train/eval steps (eager, jit or scan), optax, orbax, `fit`.

The package re-exports; the code lives in named modules: `config` (TrainConfig and its checks), `data_setup`
(splits, resolved config, model and state), `loop` (`fit`), `run_folder` (open, resume, repair), `checkpoint`
(orbax run checkpoints), `lock` (RunLock), `steps`, `losses`, `optimizers`, `precision`, `distributed`,
`presets`, `tensorboard`. `save_model` / `load_model` live beside the models (`jaxnets.models.saving`).
"""

from jaxnets.contract import InputContract
from jaxnets.models.saving import CheckpointError, load_model, save_model
from jaxnets.report import plot_history
from jaxnets.training import losses, optimizers, precision
from jaxnets.training.checkpoint import Checkpoints
from jaxnets.training.config import ConfigError, TrainConfig
from jaxnets.training.data_setup import Splits, load_splits
from jaxnets.training.lock import RunLock, RunLocked, WorkdirNotWritable
from jaxnets.training.loop import FitResult, NonFiniteLoss, fit
from jaxnets.training.state import TrainState
from jaxnets.training.steps import (
                                    MODES,
                                    Steps,
                                    eval_step,
                                    evaluate,
                                    make_steps,
                                    predict,
                                    scan_epoch,
                                    summarize,
                                    train_step,
)

__all__ = [
    "MODES", "CheckpointError", "Checkpoints", "ConfigError", "FitResult", "InputContract", "NonFiniteLoss",
    "RunLock", "RunLocked", "Splits", "Steps", "TrainConfig", "TrainState", "WorkdirNotWritable", "eval_step",
    "evaluate", "fit", "load_model", "load_splits", "losses", "make_steps", "optimizers", "plot_history",
    "precision", "predict", "save_model", "scan_epoch", "summarize", "train_step",
]
