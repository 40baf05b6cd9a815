"""Training: TrainState, pure train/eval steps (eager, jit or scan), optax, orbax, `fit`."""

from jaxnets.contract import InputContract
from jaxnets.training import losses, optimizers, precision
from jaxnets.training.checkpoint import (CheckpointError, Checkpoints, RunLock, RunLocked, WorkdirNotWritable,
                                         load_model, save_model)
from jaxnets.training.fit import FitResult, NonFiniteLoss, Splits, TrainConfig, fit, load_splits, plot_history
from jaxnets.training.state import TrainState
from jaxnets.training.steps import (MODES, Steps, eval_step, evaluate, make_steps, predict, scan_epoch, summarize,
                                    train_step)

__all__ = [
    "MODES", "CheckpointError", "Checkpoints", "FitResult", "InputContract", "NonFiniteLoss", "RunLock", "RunLocked", "Splits", "Steps",
    "TrainConfig", "TrainState", "WorkdirNotWritable", "eval_step", "evaluate", "fit", "load_model", "load_splits",
    "losses", "make_steps", "optimizers", "plot_history", "precision", "predict", "save_model", "scan_epoch",
    "summarize", "train_step",
]
