"""`jaxnets-train`: train a model end to end, eager or jit, with checkpoints and resume.

With no arguments it trains LeNet on the embedded digits (no download) and
prints a final test accuracy.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing

from jaxnets import compile_cache, data
from jaxnets.paths import expand_path
from jaxnets.training import CheckpointError, ConfigError, NonFiniteLoss, TrainConfig, distributed, fit
from jaxnets.training.config import RESUME_FROM_BEST, check_field
from jaxnets.training.presets import PRESETS, preset

# Field type -> argparse value type. A field whose type is not here cannot become a flag: `config_flags` refuses
# it when the parser is built, rather than turning it into a string flag.
_FLAG_TYPES = {int: int, float: float, bool: bool, str: str, int | None: int, float | None: float, str | None: str}


def _field_type(field: dataclasses.Field, hints: dict) -> type:
    """int, float, bool or str: what a flag for `field` parses its text into (from its resolved type hint).

    Raises:
      TypeError: the field's type has no flag type (add it to `_FLAG_TYPES`, or make the field without `option`).
    """
    hint = hints[field.name]
    if hint not in _FLAG_TYPES:
        raise TypeError(f"TrainConfig.{field.name}: no command-line flag type for {hint!r}; map it in "
                        "jaxnets.cli.train._FLAG_TYPES or make the field with dataclasses.field (no flag)")
    return _FLAG_TYPES[hint]


def _value_parser(field: dataclasses.Field, kind: type):
    """text -> value of `field`, refusing what `TrainConfig.check` would refuse (so the error names the flag)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {'a whole' if kind is int else 'a'} number: {text!r}") from None
        try:
            check_field(field.name, value)
        except ConfigError as err:
            raise argparse.ArgumentTypeError(err.message) from None
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    return parse


def config_flags(p: argparse.ArgumentParser) -> None:
    """One `--field-name` flag per `TrainConfig` field made with `config.option`: help, default and choices from there.

    Unset flags stay absent (`argparse.SUPPRESS`), so a preset and then the
    field's default fill them.

    Raises:
      TypeError: a flag field's type has no flag type (`_FLAG_TYPES`).
    """
    group = p.add_argument_group("run (TrainConfig fields; a preset and then these override the defaults)")
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        help_text = field.metadata.get("help")
        if not help_text:
            continue  # not a flag (e.g. model_kwargs)
        flag = "--" + field.name.replace("_", "-")
        default = field.default
        shown = f"{help_text} (default {default})" if default is not None else help_text
        kind = _field_type(field, hints)
        choices = field.metadata.get("choices")
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=shown)
        elif choices is not None:
            group.add_argument(flag, choices=list(choices()), default=argparse.SUPPRESS, help=shown)
        elif kind is str:
            group.add_argument(flag, default=argparse.SUPPRESS, help=shown)
        else:
            group.add_argument(flag, type=_value_parser(field, kind), default=argparse.SUPPRESS, help=shown)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jaxnets-train",
        description="Train a jaxnets model end to end (defaults: LeNet on the embedded digits, no download).",
        epilog="presets: " + ", ".join(PRESETS) + ". Explicit flags override the preset.\n\ndata sets:\n"
               + "\n".join(f"  {e.name:<14} {e.description}" for e in data.catalog.entries()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default=argparse.SUPPRESS, help="a recipe from the texts")
    config_flags(p)
    p.add_argument("--workdir", default=None, help="checkpoints, history.json, curves.png (default runs/MODEL-DATASET)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --workdir")
    p.add_argument("--resume-from-best", action="store_true",
                   help="continue from the epoch saved in WORKDIR/best/ when WORKDIR/checkpoints/ is gone")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--no-cache", action="store_true", help="do not use or fill the compilation cache "
                   "($JAXNETS_CACHE/xla; JAXNETS_COMPILE_CACHE=0 does the same) nor the decoded-data caches (.npz "
                   "beside the data or in $JAXNETS_CACHE, keyed on the files' contents; JAXNETS_DATA_CACHE=0 does the "
                   "same)")
    p.add_argument("--no-tensorboard", action="store_true",
                   help="do not write TensorBoard logs (default: WORKDIR/tensorboard; view with "
                        "`tensorboard --logdir WORKDIR`)")
    p.add_argument("--coordinator-address", default=None, help="HOST:PORT of process 0 (with --distributed)")
    p.add_argument("--num-processes", type=int, default=None, help="processes in the run (with --distributed)")
    p.add_argument("--process-id", type=int, default=None, help="this process's index, 0 first (with --distributed)")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig's defaults, then the preset, then explicit flags."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return preset(getattr(args, "preset", None), **{k: v for k, v in vars(args).items() if k in fields})


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (0 done, 1 an expected failure in one line, 130 interrupted)."""
    p = parser()
    args = p.parse_args(argv)
    config = config_from_args(args)
    try:
        config.check()  # the library's checks; the flags' own types refuse most values earlier
    except ConfigError as err:
        p.error(f"argument --{err.field.replace('_', '-')}: {err.message}")
    workdir = expand_path(args.workdir or f"runs/{config.model}-{config.dataset}")
    if config.distributed:  # before anything starts JAX's backend
        try:
            distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
        except (ValueError, RuntimeError) as err:
            print(f"jaxnets-train: error: {err}", file=sys.stderr)
            return 1
    elif any(v is not None for v in (args.coordinator_address, args.num_processes, args.process_id)):
        p.error("--coordinator-address, --num-processes and --process-id need --distributed")
    # One voice: only process 0 reports (fit silences the others itself); errors come from every process.
    say = print if distributed.is_main_process() else distributed.silent
    compile_cache.compilation_cache_for_command(args.no_cache)
    say(f"jaxnets-train: {config.model} on {config.dataset} ({config.mode}), {config.epochs} epochs, "
        f"{config.optimizer} lr {config.lr}, batch {config.batch_size} -> {workdir}", flush=True)
    try:
        resume = RESUME_FROM_BEST if args.resume_from_best else args.resume
        result = fit(config, workdir=workdir, resume=resume, progress=False if args.no_progress else None,
                     tensorboard=not args.no_tensorboard, data_cache=not args.no_cache)
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


if __name__ == "__main__":
    sys.exit(main())
