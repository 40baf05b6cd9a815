"""`jaxnets-export`: a trained model in, a static-graph artifact (`jax.export`) out.

    jaxnets-export --from runs/lenet-digits -o lenet.jaxexport          # a training run: best/ (else latest) checkpoint
    jaxnets-export --from saved/resnet18 -o resnet18.jaxexport --platforms cpu,cuda --dataset cifar10

`--from` takes a training run folder (`jaxnets-train --workdir`) or a
`save_model` folder. The artifact runs with `jaxnets.export.load` (or plain
`jax.export.deserialize`), no model code needed; see `jaxnets.export`.

The sidecar records the model's input contract (image shape, normalisation,
class names): a run's, or the one stored in the model folder. A model folder
without one (saved without `contract=`/`dataset=`, or converted without
`--dataset`) gets a warning and a `note` in the sidecar, unless `--dataset`
says what it was trained on.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from jaxnets import data, export
from jaxnets.contract import NORMALIZE, InputContract
from jaxnets.paths import expand_path


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in text.replace("x", ",").split(",") if d.strip())
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes like 64,64,3; got {text!r}")
    return shape


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxnets-export", description="Export a trained model's inference function "
                                "(eval mode, weights included) as a jax.export artifact with a symbolic batch size.")
    p.add_argument("--from", dest="source", required=True, metavar="FOLDER",
                   help="a training run folder (checkpoints/, best/) or a save_model folder (model.json)")
    p.add_argument("-o", "--output", required=True, help="the artifact file to write; <output>.json (and "
                   "<output>.mlir) go beside it")
    p.add_argument("--checkpoint", default="best", metavar="best|latest|EPOCH",
                   help="for a run folder: the best held-out checkpoint (default; the latest if there is no best), "
                        "the latest, or an epoch number")
    p.add_argument("--platforms", default="cpu", help=f"comma-separated, any of {', '.join(export.PLATFORMS)} "
                   "(lowering needs no GPU/TPU)")
    p.add_argument("--batch-name", default="b", help="name of the symbolic batch dimension (default b)")
    p.add_argument("--input-shape", type=_shape, default=None, metavar="H,W,C",
                   help="one image's shape (default the model's own; only the ImageNet layouts, names ending "
                        "in _imagenet, take others)")
    p.add_argument("--dataset", choices=data.DATASETS, default=None,
                   help="for a save_model folder saved without its input contract: the data set it was trained on, "
                        "to record its normalisation and class names")
    p.add_argument("--normalize", choices=NORMALIZE, default="dataset",
                   help="with --dataset: how its images were normalised (as jaxnets-train --normalize)")
    p.add_argument("--no-stablehlo", action="store_true", help="do not write the StableHLO text beside it")
    p.add_argument("--overwrite", action="store_true", help="replace an existing artifact")
    return p


def _is_run_folder(folder: Path) -> bool:
    return (folder / "checkpoints").is_dir() or (folder / "best").is_dir()


def from_run(folder: Path, which: str = "best", log=print) -> tuple[str, dict, dict, InputContract | None]:
    """`(model name, model kwargs, variables, input contract)` from a training run's checkpoint.

    Raises:
      CheckpointError: no such checkpoint, or it is corrupt.
      ValueError: `which` is not best, latest or an epoch number.
    """
    import jax

    from jaxnets.training import CheckpointError, Checkpoints, TrainConfig
    from jaxnets.training.data_setup import build, learning_rate_schedule

    if which not in ("best", "latest") and not which.isdigit():
        raise ValueError(f"--checkpoint must be best, latest or an epoch number; got {which!r}")
    checkpoints = Checkpoints(folder)
    try:
        best = which == "best" and checkpoints.best_epoch() is not None
        epoch = int(which) if which.isdigit() else (checkpoints.best_epoch() if best else checkpoints.latest_epoch())
        if epoch is None:
            raise CheckpointError(f"no checkpoint in {folder}: train first, or point --from at another run")
        meta = checkpoints.read_meta(None if best else epoch)
        config = TrainConfig.from_json(meta["config"])
        # The state's structure (optimizer included) exactly as fit builds it: the schedule's length changes no
        # shape, so one step per epoch stands in for the run's.
        target = jax.eval_shape(lambda: build(config, learning_rate_schedule(config, 1))[1].arrays())
        arrays, _ = checkpoints.restore(target, epoch=epoch, best=best)
    finally:
        checkpoints.close()
    log(f"restored {folder / ('best' if best else 'checkpoints') / str(epoch)} ({config.model}, epoch {epoch})")
    variables = {"params": arrays["params"],
                 **({"batch_stats": arrays["batch_stats"]} if arrays["batch_stats"] else {})}
    return config.model, config.model_kwargs, variables, _run_contract(config, meta, log)


def _run_contract(config, meta: dict, log) -> InputContract | None:
    """The run's input contract: as fit stored it, else (runs saved before it did) rebuilt as fit builds it."""
    from jaxnets.training.data_setup import load_splits

    if meta.get("input_contract") is not None:
        try:
            return InputContract.from_json(meta["input_contract"])
        except ValueError as err:
            log(f"note: the run's stored input contract is malformed ({err}); rebuilding it from its data")
    try:
        known = InputContract.for_dataset(config.dataset, config.normalize)
    except ValueError:  # no image shape without the data (an image folder)
        known = None
    if known is not None and known.mean is not None:
        return known
    try:
        train = load_splits(config, log=lambda *_: None).train
    except data.DataError as err:
        log(f"note: normalisation not recorded ({config.dataset} is not readable here: {err})")
        return known
    pre = data.Preprocess.for_dataset(config.dataset, train.images, config.normalize)
    return InputContract(train.image_shape, pre.mean, pre.std, train.class_names, config.dataset, config.normalize)


def _folder_contract(source: Path, stored: InputContract | None, args) -> InputContract | None:
    """A model folder's contract: the stored one, or `--dataset`'s when it has none.

    Raises:
      ValueError: `--dataset` names another data set than the one stored.
    """
    if args.dataset is None:
        return stored
    if stored is not None:
        if (stored.dataset, stored.normalize) != (args.dataset, args.normalize):
            raise ValueError(f"{source} was saved for {stored.dataset} (normalize={stored.normalize}), not "
                             f"{args.dataset} (normalize={args.normalize}); leave --dataset out to use what it says")
        return stored
    return InputContract.for_dataset(args.dataset, args.normalize)


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (0 done, 1 an expected failure in one line)."""
    args = parser().parse_args(argv)
    source = expand_path(args.source)
    with warnings.catch_warnings():  # a repaired save, an unverified folder: one line each, as they happen
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *_: print(f"jaxnets-export: warning: {message}", file=sys.stderr)
        return _export(args, source)


def _export(args, source: Path) -> int:
    """`main` once its arguments are parsed (warnings are printed by `main`)."""
    from jaxnets.models.saving import (
        CheckpointError,
        decode_kwargs,
        load_model,
        read_contract,
        recover_interrupted_save,
    )

    try:
        platforms = tuple(p for p in args.platforms.split(",") if p)
        if _is_run_folder(source):
            name, kwargs, variables, contract = from_run(source, args.checkpoint)
        elif (source / "model.json").is_file() or recover_interrupted_save(source):
            model, variables = load_model(source)  # checks model.json and the variables
            saved = json.loads((source / "model.json").read_text())
            name, kwargs = saved["name"], decode_kwargs(saved.get("kwargs", {}))
            contract = _folder_contract(source, read_contract(source), args)
        else:
            raise FileNotFoundError(f"{source} is neither a training run folder (checkpoints/, best/) nor a "
                                    "save_model folder (model.json)")
        path = export.save(args.output, name, variables, model_kwargs=kwargs, batch=args.batch_name,
                           platforms=platforms, input_shape=args.input_shape, contract=contract,
                           write_stablehlo=not args.no_stablehlo, overwrite=args.overwrite)
    except (CheckpointError, export.ExportError, FileExistsError, FileNotFoundError, ValueError, data.DataError) as err:
        print(f"jaxnets-export: error: {err}", file=sys.stderr)
        return 1
    info = export.read_info(path)
    if info.get("note"):
        print(f"jaxnets-export: warning: {info['note']} (recorded as the sidecar's note)", file=sys.stderr)
    print(f"exported {export.describe(info)}")
    print(f"artifact: {path}\nsidecar: {export.sidecar_path(path)}"
          + ("" if args.no_stablehlo else f"\nStableHLO: {export.stablehlo_path(path)}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
