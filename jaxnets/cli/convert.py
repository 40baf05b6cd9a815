"""`jaxnets-convert`: a PyTorch `.pth` checkpoint in, a `save_model` folder out.

    jaxnets-convert checkpoint.pth converted/ --model resnet18 --num-classes 10 --dataset cifar10

The folder then loads with `jaxnets.training.load_model` (or trains further
with `jaxnets-train`), with no Python written. `--dataset` stores the input
contract (image shape, normalisation, class names, from the data catalog) so
that exports of the folder record it. The work is done by
`jaxnets.interop.convert`; this is only the argument parsing.
"""

from __future__ import annotations

import argparse
import ast
import sys
import warnings

from jaxnets import data, interop, models
from jaxnets.contract import NORMALIZE, InputContract


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value  # a bare word such as head=imagenet
    return key.replace("-", "_"), parsed


def _pair(text: str) -> tuple[str, str]:
    theirs, sep, ours = text.partition("=")
    if not sep or not theirs or not ours:
        raise argparse.ArgumentTypeError(f"expected THEIRS=OURS (e.g. fc2=hidden.1), got {text!r}")
    return theirs, ours


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxnets-convert",
                                description="Convert a PyTorch checkpoint (.pt/.pth) into a jaxnets save_model folder.")
    p.add_argument("checkpoint", help="a .pt/.pth file: a state_dict or a dict holding one "
                                      "(state_dict/model/net/model_state_dict); opened with weights_only=True")
    p.add_argument("output", help="the folder to write (jaxnets.training.save_model format)")
    p.add_argument("--model", required=True, help="jaxnets model name: " + ", ".join(models.available()))
    p.add_argument("--num-classes", type=int, default=None, help="number of classes of the checkpoint's head")
    p.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                   help="another models.create argument, e.g. --option head=imagenet (repeatable)")
    p.add_argument("--dataset", choices=data.DATASETS, default=None,
                   help="the data set the checkpoint was trained on: its input contract (image shape, "
                        "normalisation, class names) is stored with the model, and every export records it")
    p.add_argument("--normalize", choices=NORMALIZE, default="dataset",
                   help="with --dataset: how its images were normalised (as jaxnets-train --normalize)")
    p.add_argument("--map", type=_pair, action="append", default=[], metavar="THEIRS=OURS",
                   help="pin one of the checkpoint's layers (or tensors) to one of ours, e.g. --map fc2=hidden.1 "
                        "(repeatable); the rest are matched by structure")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--show-mapping", action="store_true", help="print every checkpoint key and the key it became")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (0 done, 2 an expected failure in one line)."""
    args = parser().parse_args(argv)
    with warnings.catch_warnings():  # e.g. a killed earlier save repaired: one line each, as they happen
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *_: print(f"jaxnets-convert: warning: {message}", file=sys.stderr)
        return _convert(args)


def _convert(args) -> int:
    """`main` once its arguments are parsed (warnings are printed by `main`)."""
    create_kwargs = dict(args.option)
    if args.num_classes is not None:
        create_kwargs["num_classes"] = args.num_classes
    try:
        contract = None if args.dataset is None else InputContract.for_dataset(args.dataset, args.normalize)
        path, mapping = interop.convert(args.checkpoint, args.output, args.model, overwrite=args.overwrite,
                                        mapping=dict(args.map) or None, contract=contract, **create_kwargs)
    except (interop.TorchCheckpointError, ValueError, FileNotFoundError, FileExistsError, ImportError,
            data.DataError) as err:
        print(f"jaxnets-convert: error: {err}", file=sys.stderr)
        return 2
    renamed = sum(1 for theirs, ours in mapping.items() if theirs != ours)
    how = f"{renamed} matched by structure" if renamed else "all by name"
    print(f"converted {len(mapping)} tensors ({how}) from {args.checkpoint} into {path}")
    if contract is None:
        print("note: no --dataset given, so the folder records no input contract (normalisation, class names); "
              "its exports will say so. Convert again with --dataset NAME to record it", file=sys.stderr)
    elif contract.mean is None:
        print(f"note: {args.dataset} has no tabled normalisation (fit computes it from the run's training images); "
              "the folder records its shape and classes only", file=sys.stderr)
    if args.show_mapping:
        for theirs, ours in mapping.items():
            print(f"  {theirs} -> {ours}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
