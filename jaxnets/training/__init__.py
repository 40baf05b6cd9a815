"""Training: TrainState, pure train/eval steps (eager or jit), optax, orbax, `fit`."""

from jaxnets.training import losses, optimizers
from jaxnets.training.checkpoint import (CheckpointError, Checkpoints, RunLock, RunLocked, WorkdirNotWritable,
                                         load_model, save_model)
from jaxnets.training.fit import FitResult, NonFiniteLoss, Splits, TrainConfig, fit, load_splits, plot_history
from jaxnets.training.state import TrainState
from jaxnets.training.steps import MODES, Steps, evaluate, make_eval_step, make_steps, make_train_step, predict, summarize

__all__ = [
    "CheckpointError", "Checkpoints", "RunLock", "RunLocked", "WorkdirNotWritable", "FitResult", "MODES", "NonFiniteLoss", "Splits", "Steps", "TrainConfig",
    "TrainState", "evaluate", "fit", "load_model", "load_splits", "losses", "make_eval_step", "make_steps",
    "make_train_step", "optimizers", "plot_history", "predict", "save_model", "summarize",
]
