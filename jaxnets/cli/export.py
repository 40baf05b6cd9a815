"""`jaxnets-export`: a trained model in, a static-graph artifact (`jax.export`) out.

    jaxnets-export --from runs/lenet-digits -o lenet.jaxexport          # a training run: best/ (else latest) checkpoint
    jaxnets-export --from saved/resnet18 -o resnet18.jaxexport --platforms cpu,cuda --dataset cifar10

`--from` takes a training run folder (`jaxnets-train --workdir`) or a
`save_model` folder. The artifact runs with `jaxnets.export.load` (or plain
`jax.export.deserialize`), no model code needed; see `jaxnets.export`.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

from jaxnets import data, export
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
                   help="for a save_model folder: the data set it was trained on, to record its normalisation")
    p.add_argument("--normalize", choices=("dataset", "half", "none"), default="dataset",
                   help="with --dataset: how its images were normalised (as jaxnets-train --normalize)")
    p.add_argument("--no-stablehlo", action="store_true", help="do not write the StableHLO text beside it")
    p.add_argument("--overwrite", action="store_true", help="replace an existing artifact")
    return p


def _is_run_folder(folder: Path) -> bool:
    return (folder / "checkpoints").is_dir() or (folder / "best").is_dir()


def from_run(folder: Path, which: str = "best", log=print) -> tuple[str, dict, dict, dict | None]:
    """`(model name, model kwargs, variables, normalisation)` from a training run's checkpoint.

    Raises:
      CheckpointError: no such checkpoint, or it is corrupt.
      ValueError: `which` is not best, latest or an epoch number.
    """
    import jax  # noqa: PLC0415

    from jaxnets import models  # noqa: PLC0415
    from jaxnets.training import CheckpointError, Checkpoints, TrainConfig  # noqa: PLC0415
    from jaxnets.training.fit import build  # noqa: PLC0415

    if which not in ("best", "latest") and not which.isdigit():
        raise ValueError(f"--checkpoint must be best, latest or an epoch number; got {which!r}")
    checkpoints = Checkpoints(folder)
    try:
        best = which == "best" and checkpoints.best_epoch() is not None
        epoch = int(which) if which.isdigit() else (checkpoints.best_epoch() if best else checkpoints.latest_epoch())
        if epoch is None:
            raise CheckpointError(f"no checkpoint in {folder}: train first, or point --from at another run")
        config = TrainConfig.from_json(checkpoints.read_meta(None if best else epoch)["config"])
        model = models.create(config.model, **config.model_kwargs)
        # The state's structure (optimizer included) exactly as fit builds it; the stand-in data set only
        # answers build's image-shape check, with the shape the run was built for.
        stand_in = types.SimpleNamespace(image_shape=tuple(model.input_shape))
        target = jax.eval_shape(lambda: build(config, stand_in, 1)[1].arrays())
        arrays, _ = checkpoints.restore(target, epoch=epoch, best=best)
    finally:
        checkpoints.close()
    log(f"restored {folder / ('best' if best else 'checkpoints') / str(epoch)} ({config.model}, epoch {epoch})")
    variables = {"params": arrays["params"], **({"batch_stats": arrays["batch_stats"]} if arrays["batch_stats"] else {})}
    return config.model, config.model_kwargs, variables, _run_normalization(config, log)


def _run_normalization(config, log) -> dict | None:
    """The run's input normalisation: tabled, or as fit computed it from the run's training images."""
    from jaxnets.training.fit import load_splits  # noqa: PLC0415

    known = export.normalization_for(config.dataset, config.normalize)
    if known is not None or config.normalize != "dataset":
        return known
    try:
        train = load_splits(config, log=lambda *_: None).train
    except data.DataError as err:
        log(f"note: normalisation not recorded ({config.dataset} is not readable here: {err})")
        return None
    pre = data.Preprocess.for_dataset(config.dataset, train.images, config.normalize)
    return {"dataset": config.dataset, "normalize": config.normalize, "mean": list(pre.mean), "std": list(pre.std)}


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (0 done, 1 an expected failure in one line)."""
    from jaxnets.training import CheckpointError, load_model  # noqa: PLC0415
    from jaxnets.training.checkpoint import decode_kwargs  # noqa: PLC0415

    args = parser().parse_args(argv)
    source = expand_path(args.source)
    try:
        platforms = tuple(p for p in args.platforms.split(",") if p)
        if _is_run_folder(source):
            name, kwargs, variables, normalization = from_run(source, args.checkpoint)
        elif (source / "model.json").is_file():
            model, variables = load_model(source)  # checks model.json and the variables
            saved = json.loads((source / "model.json").read_text())
            name, kwargs = saved["name"], decode_kwargs(saved.get("kwargs", {}))
            channels = (args.input_shape or model.input_shape)[-1]
            normalization = export.normalization_for(args.dataset, args.normalize, channels)
            if args.dataset and normalization is None:
                print(f"note: the normalisation of {args.dataset} is not tabled; not recorded", file=sys.stderr)
        else:
            raise FileNotFoundError(f"{source} is neither a training run folder (checkpoints/, best/) nor a "
                                    "save_model folder (model.json)")
        path = export.save(args.output, name, variables, model_kwargs=kwargs, batch=args.batch_name,
                           platforms=platforms, input_shape=args.input_shape, normalization=normalization,
                           write_stablehlo=not args.no_stablehlo, overwrite=args.overwrite)
    except (CheckpointError, export.ExportError, FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"jaxnets-export: error: {err}", file=sys.stderr)
        return 1
    info = export.read_info(path)
    print(f"exported {export.describe(info)}")
    print(f"artifact: {path}\nsidecar: {export.sidecar_path(path)}"
          + ("" if args.no_stablehlo else f"\nStableHLO: {export.stablehlo_path(path)}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
