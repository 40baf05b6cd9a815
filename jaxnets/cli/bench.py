"""`jaxnets-bench`: eager vs jit vs PyTorch in one table, JSON and plot."""

from __future__ import annotations

import argparse
import os
import sys

from jaxnets import bench, compile_cache, models
from jaxnets.bench import cases, host
from jaxnets.report import write_json


def _batch_sizes(text: str) -> list[int]:
    """'128' or '32,128' -> [32, 128]; argparse turns the ValueError into a usage error naming the flag."""
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected batch sizes like 128 or 32,128, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive integers, got {text!r}")
    return sizes


def _positive(text: str) -> int:
    """A positive whole number (--rounds)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _whats(text: str) -> list[str]:
    """'train', 'infer', 'train,infer' or 'pipeline' (which runs alone)."""
    whats = [w for w in text.split(",") if w]
    choices = (*bench.WHAT, "pipeline")
    bad = [w for w in whats if w not in choices]
    if bad or not whats:
        raise argparse.ArgumentTypeError(f"invalid choice {text!r}: comma-separated {', '.join(choices)}")
    if "pipeline" in whats and len(whats) > 1:
        raise argparse.ArgumentTypeError("pipeline runs on its own (not with train or infer)")
    return whats


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxnets-bench", description="Eager vs jit (vs PyTorch), measured in one run.")
    p.add_argument("--models", default="mlp,lenet,resnet18,vgg16", help="comma-separated model names")
    p.add_argument("--modes", default=",".join(bench.MODES), help="comma-separated: " + ", ".join(bench.MODES))
    p.add_argument("--batch-size", type=_batch_sizes, default=[128],
                   help="images per step; comma-separated for several in one run, e.g. 32,128 (default 128)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--steps", type=int, default=None, help="timed steps per case")
    group.add_argument("--min-time", type=float, default=None, help="seconds of timed steps per case (default 2)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--what", type=_whats, default=["train"],
                   help="train step, inference (comma-separated for both: train,infer), or the input pipeline "
                        "vs the ResNet-18 step (pipeline)")
    p.add_argument("--data-dir", default=None, help="CIFAR-10 files for --what pipeline (default: synthetic)")
    p.add_argument("--numerics", action="store_true", help="also report eager vs jit loss/params after 3 steps")
    p.add_argument("--vary-batch", action="store_true", help="show recompilation on new batch shapes")
    p.add_argument("--no-cache", action="store_true", help="do not use or fill the compilation cache "
                   "(JAXNETS_COMPILE_CACHE=0 does the same); compile times are then always cold")
    p.add_argument("--rounds", type=_positive, default=1,
                   help="measure the whole sweep this many times, one round after the other, and report each "
                        "case's median over rounds; ratios are taken round by round (median [min-max]), so a slow "
                        "spell on a shared machine hits one round of every mode rather than one mode (default 1)")
    p.add_argument("--torch-python", default=None, metavar="PYTHON",
                   help="run the PyTorch modes under this Python interpreter (it needs torch and this checkout of "
                        "jaxnets: pip install -e '.[torch]'), e.g. a Python 3.11 environment's when this one has jax "
                        "0.12 and no torch, so that both are timed in one run")
    p.add_argument("--json", default=None, help="write results here (rewritten after every case, with \"complete\": "
                   "false until the run ends, so a run cut short keeps what it measured)")
    p.add_argument("--plot", default=None, help="write a bar chart here (PNG)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # Before anything starts JAX's backend: on a GPU, leave memory for the child processes that time each mode.
    os.environ.setdefault(*cases.NO_PREALLOCATION)
    cache = compile_cache.compilation_cache_for_command(args.no_cache)
    if cache is not None:
        print(f"compilation cache: {cache} (compile times are cache reads where it holds the program; "
              "--no-cache for cold compiles)")
    names = [m for m in args.models.split(",") if m]
    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in names if m not in models.available()]
    if bad:
        print(f"jaxnets-bench: error: unknown model(s) {bad}; available: {', '.join(models.available())}",
              file=sys.stderr)
        return 2
    bad = [m for m in modes if m not in bench.MODES]
    if bad:
        print(f"jaxnets-bench: error: unknown mode(s) {bad}; choose from {', '.join(bench.MODES)}", file=sys.stderr)
        return 2
    if args.what == ["pipeline"] and len(args.batch_size) > 1:
        print("jaxnets-bench: error: --what pipeline takes one --batch-size", file=sys.stderr)
        return 2
    torch_python = args.torch_python if any(m in bench.TORCH_MODES for m in modes) else None
    if torch_python is not None:
        try:
            bench.torch_interpreter(torch_python)
        except ValueError as error:
            print(f"jaxnets-bench: error: --torch-python: {error}", file=sys.stderr)
            return 2
    report: dict = {"machine": bench.machine(torch_python), "peak_gflops": bench.peak_gflops(),
                    "command": " ".join(sys.argv)}
    size = host.peak_matmul_size()
    print(f"machine: {report['machine']}  peak {report['peak_gflops']:.1f} GFLOP/s (jitted {size}^2 matmul)")
    if args.what == ["pipeline"]:
        from jaxnets.bench import pipeline

        (batch_size,) = args.batch_size
        result = pipeline.run(args.data_dir, batch_size)
        report["pipeline"] = result
        print(f"input pipeline ({result['dataset']}, batch {batch_size}, crop+flip+normalize, {result['device']}): "
              f"{result['pipeline']['images_per_s']:,.0f} img/s (batches cut on the "
              f"{'device' if result['pipeline']['resident'] else 'host'}; host {result['host']['images_per_s']:,.0f}, "
              f"device {result['resident']['images_per_s']:,.0f}); {result['model']} jit train step: "
              f"{result['train']['images_per_s']:,.1f} img/s; ratio {result['ratio']:,.0f}x")
    else:
        measured: list[dict] = []

        def keep(row: dict) -> None:  # the JSON file holds every case measured so far (a run cut short keeps them)
            measured.append(row)
            if args.json:
                write_json(args.json, {**report, "complete": False, "rows_measured": measured}, default=str)

        rows = [row for what in args.what for batch_size in args.batch_size
                for row in bench.run(names, modes, batch_size, steps=args.steps,
                                     min_time=args.min_time if args.steps is None else None, dtype=args.dtype,
                                     what=what, rounds=args.rounds, torch_python=torch_python, on_row=keep)]
        report["rows"], report["ratios"] = rows, bench.ratios(rows)
        print()
        bench.print_table(rows)
        if args.plot:
            bench.plot(rows, args.plot)
            print(f"plot: {args.plot}")
    if args.numerics:
        report["numerics"] = [bench.numerics(n) for n in names]
        for n in report["numerics"]:
            print(f"numerics {n['model']}: after {n['steps']} steps loss eager {n['loss_eager']:.6f} jit "
                  f"{n['loss_jit']:.6f} (|diff| {n['loss_abs_diff']:.2e}), "
                  f"params max |diff| {n['params_max_abs_diff']:.2e}")
    if args.vary_batch:
        report["vary_batch"] = bench.vary_batch(names[0] if names else "lenet")
        for r in report["vary_batch"]:
            print(f"vary-batch {r['mode']:>5} batch {r['batch_size']:>3} {'new' if r['new_shape'] else 'seen':>4}: "
                  f"{r['compilations']:>3} compilations ({r['compile_s']:.2f}s compiling), {r['seconds']:.3f}s")
    if args.json:
        write_json(args.json, {**report, "complete": True}, default=str)
        print(f"json: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
