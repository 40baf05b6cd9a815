"""`jaxnets-train`: train a model end to end, eager or jit, with checkpoints and resume.

With no arguments it trains LeNet on the embedded digits (no download) and
prints a final test accuracy.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

from jaxnets import data, models
from jaxnets.training import CheckpointError, NonFiniteLoss, TrainConfig, distributed, fit, optimizers
from jaxnets.training.steps import MODES
from train.presets import PRESETS

DEFAULTS = dict(PRESETS["digits-lenet"])


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = _finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = _finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _fraction(text: str) -> float:
    value = _finite_float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jaxnets-train",
        description="Train a jaxnets model end to end (defaults: LeNet on the embedded digits, no download).",
        epilog="presets: " + ", ".join(PRESETS) + ". Explicit flags override the preset.",
    )
    S = argparse.SUPPRESS  # unset flags stay absent, so presets and defaults can fill them
    p.add_argument("--preset", choices=sorted(PRESETS), default=S, help="a recipe from the texts")
    p.add_argument("--model", choices=models.available(), default=S, help="model name (default lenet)")
    p.add_argument("--dataset", choices=data.DATASETS, default=S, help="data set (default digits, embedded)")
    p.add_argument("--source", choices=data.SOURCES, default=S, help="where data comes from (default auto)")
    p.add_argument("--data-dir", default=S, help="folder with the data files (or tfds data_dir)")
    p.add_argument("--split", choices=data.SPLITS, default=S,
                   help="split to train on; the held-out part is cut from it (default train)")
    p.add_argument("--epochs", type=_positive_int, default=S)
    p.add_argument("--batch-size", type=_positive_int, default=S)
    p.add_argument("--eval-batch-size", type=_positive_int, default=S)
    p.add_argument("--optimizer", choices=optimizers.OPTIMIZERS, default=S)
    p.add_argument("--lr", type=_positive_float, default=S)
    p.add_argument("--momentum", type=_fraction, default=S)
    p.add_argument("--nesterov", action="store_true", default=S)
    p.add_argument("--weight-decay", type=_non_negative_float, default=S)
    p.add_argument("--schedule", choices=optimizers.SCHEDULES, default=S)
    p.add_argument("--warmup-epochs", type=_non_negative_float, default=S)
    p.add_argument("--label-smoothing", type=_fraction, default=S)
    p.add_argument("--val-fraction", type=_fraction, default=S, help="held-out fraction of the split (default 0.2)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=S,
                   help="random crop (pad 4) + horizontal flip")
    p.add_argument("--normalize", choices=("dataset", "half", "none"), default=S,
                   help="per-dataset mean/std, or the texts' Normalize((0.5,), (0.5,))")
    p.add_argument("--mode", choices=MODES, default=S, help="jit (static graph) or eager (op by op)")
    p.add_argument("--seed", type=int, default=S)
    p.add_argument("--keep", type=_positive_int, default=S, help="checkpoints to keep besides the best (default 3)")
    p.add_argument("--workdir", default=None, help="checkpoints, history.json, curves.png (default runs/MODEL-DATASET)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --workdir")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--no-tensorboard", action="store_true",
                   help="do not write TensorBoard logs (default: WORKDIR/tensorboard; view with "
                        "`tensorboard --logdir WORKDIR`)")
    p.add_argument("--distributed", action="store_true", default=S,
                   help="join a multi-process run (jax.distributed.initialize): every process runs this same "
                        "command; the coordinator comes from the flags below or the cluster's environment")
    p.add_argument("--coordinator-address", default=None, help="HOST:PORT of process 0 (with --distributed)")
    p.add_argument("--num-processes", type=_positive_int, default=None,
                   help="processes in the run (with --distributed)")
    p.add_argument("--process-id", type=int, default=None, help="this process's index, 0 first (with --distributed)")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """DEFAULTS, then the preset, then explicit flags."""
    values = dict(DEFAULTS)
    values.update(PRESETS.get(getattr(args, "preset", None), {}))
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values.update({k: v for k, v in vars(args).items() if k in fields})
    return TrainConfig(**{k: v for k, v in values.items() if k in fields})


def _silent(*args, **kwargs) -> None:
    """`print` for processes other than 0."""


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (0 done, 1 an expected failure in one line, 130 interrupted)."""
    p = parser()
    args = p.parse_args(argv)
    config = config_from_args(args)
    try:
        config.check()  # the library's ranges; the flags' own types refuse most values earlier
    except ValueError as err:
        field = str(err).split()[0]
        p.error(f"argument --{field.replace('_', '-')}: {err}")
    workdir = Path(args.workdir or f"runs/{config.model}-{config.dataset}")
    if config.distributed:  # before anything starts JAX's backend
        distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
    elif any(v is not None for v in (args.coordinator_address, args.num_processes, args.process_id)):
        p.error("--coordinator-address, --num-processes and --process-id need --distributed")
    # One voice: only process 0 reports (fit silences the others itself); errors come from every process.
    say = print if distributed.is_main_process() else _silent
    say(f"jaxnets-train: {config.model} on {config.dataset} ({config.mode}), {config.epochs} epochs, "
          f"{config.optimizer} lr {config.lr}, batch {config.batch_size} -> {workdir}", flush=True)
    try:
        result = fit(config, workdir=workdir, resume=args.resume, progress=False if args.no_progress else None,
                     tensorboard=not args.no_tensorboard)
    except (data.DataError, CheckpointError, NonFiniteLoss, FileExistsError, ValueError, OSError) as err:
        print(f"jaxnets-train: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"jaxnets-train: interrupted; finished epochs are saved in {workdir}: continue with --resume",
              file=sys.stderr)
        return 130
    if not result.history:
        say(f"nothing to do: {workdir} already holds all {config.epochs} epochs")
        return 0
    last = result.history[-1]
    if last.get("test_acc") is not None:
        say(f"final test accuracy: {last['test_acc']:.2%}")
    if last.get("val_acc") is not None:
        say(f"final held-out accuracy: {last['val_acc']:.2%}")
    say(f"history: {workdir / 'history.json'}, curves: {workdir / 'curves.png'}")
    return 0
