"""Which CPU path trains faster here: one train step compiled per setting, timed in alternation (noisy hosts).

    python -m jaxnets.bench.interleaved --model resnet18 --batch-size 32 --settings fast,eigen --reps 20

On a shared machine the speed drifts by 10-40% within minutes, so timing
one variant for a while and then the other compares the host's moods, not
the variants (BENCHMARKS.md "2026-12-07: issue 24 round 6" shows a rule that
won 8 of 10 such back-to-back rounds and tied under this tool). Here every
setting's train step is compiled first (the benchmark's model, batch and
SGD: `jaxnets.bench.cases`), then each repetition times `--steps` steps of
every setting back to back, the order flipped every repetition. A drift then
slows both sides of a repetition alike, and the paired ratios cancel it.

Settings are `JAXNETS_CPU_CONV` values that can change inside one process:
`fast` (jaxnets' CPU path: `backend.CONV_RULES` picks the convolution
library) and `eigen` (the same path, XLA's own convolutions). `xla` changes
process-wide XLA flags; `jaxnets-bench --modes jit,jit-xla` compares it.
A `fast` setting may change fields of the rule this CPU takes, to try a rule
before writing it down: `fast:eigen_max_batch=32` (several joined by `+`,
`none` for None, `batch_norm=0` for XLA's batch norm, `dense=0` for XLA's dots; the fields in `RULE_FIELDS`):

    python -m jaxnets.bench.interleaved --model vgg16 --batch-size 64 --settings fast,fast:eigen_max_batch=32

Code variants: to compare two versions of jaxnets' code (an old and a new
lowering) in one process, write a Python file whose `VARIANTS` dict maps a
name to a function returning a context manager that swaps the code in (and
back out), and name it after a setting with `@`:

    python -m jaxnets.bench.interleaved --model mlp --dtype bfloat16 --variants old.py --settings fast,fast@old

The setting's train step is traced and compiled inside that context; only
the compiled programs are timed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import runpy
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import jax

from jaxnets import backend, report
from jaxnets.bench import cases, host

SETTINGS = ("fast", "eigen")  # the `JAXNETS_CPU_CONV` values that switch per compiled program
HANDLER_TARGET = 'custom_call_target="jaxnets_onednn_'  # jaxnets' oneDNN calls (any kind), counted in each program
# `backend.ConvRule` fields a `fast:` setting may change; `batch_norm` and `dense` take 0 or 1 (off / on).
RULE_FIELDS = ("eigen_from_channels", "eigen_max_batch", "batch_norm", "dense")
SWITCHES = ("batch_norm", "dense")  # the on/off fields among them


def parse_setting(text: str) -> tuple[str, dict[str, int | bool | None]]:
    """`'fast'` -> `('fast', {})`; `'fast:eigen_max_batch=32+eigen_from_channels=none'` -> the rule fields too.

    Raises:
      ValueError: an unknown setting or field, a value that is not an integer or `none`, or fields on a
        setting other than `fast` (only its rules have them).
    """
    name, _, fields = text.partition(":")
    if name not in SETTINGS:
        raise ValueError(f"setting {name!r} cannot switch inside one process; use one of {SETTINGS} "
                         "('xla' changes process-wide XLA flags: compare it with `jaxnets-bench --modes jit,jit-xla`)")
    overrides: dict[str, int | bool | None] = {}
    for item in filter(None, fields.split("+")):
        field, _, value = item.partition("=")
        if field not in RULE_FIELDS or not value:
            raise ValueError(f"{item!r} in setting {text!r}: give FIELD=VALUE with FIELD one of {RULE_FIELDS}")
        if field in SWITCHES:
            if value not in ("0", "1"):
                raise ValueError(f"{item!r} in setting {text!r}: {field} is 0 (XLA's) or 1 (oneDNN's)")
            overrides[field] = value == "1"
            if field == "dense":
                overrides["dense_jax_below"] = None  # on or off whatever the jax version
            continue
        if value.lower() != "none" and not value.isdigit():
            raise ValueError(f"{item!r} in setting {text!r}: the value is a whole number or 'none'")
        overrides[field] = None if value.lower() == "none" else int(value)
    if overrides and name != "fast":
        raise ValueError(f"setting {text!r}: only 'fast' takes rule fields ('{name}' uses no rule)")
    return name, overrides


Variants = Mapping[str, Callable[[], contextlib.AbstractContextManager]]


def split_variant(text: str) -> tuple[str, str | None]:
    """`'fast:dense=0@old'` -> `('fast:dense=0', 'old')`; without `@`, `(text, None)`.

    Raises:
      ValueError: an empty variant name, or more than one `@`.
    """
    setting, at, variant = text.partition("@")
    if not at:
        return text, None
    if not variant or "@" in variant:
        raise ValueError(f"setting {text!r}: give one variant after '@' (SETTING@NAME, NAME a key of the "
                         "--variants file's VARIANTS)")
    return setting, variant


def load_variants(path: str | Path) -> dict[str, Callable[[], contextlib.AbstractContextManager]]:
    """The `VARIANTS` dict of the Python file at `path`: name -> a function returning a context manager.

    Raises:
      ValueError: the file is missing, or defines no `VARIANTS` dict of callables.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--variants {path}: no such file (a Python file defining VARIANTS = {{name: function "
                         "returning a context manager}})")
    variants = runpy.run_path(str(path)).get("VARIANTS")
    if not isinstance(variants, Mapping) or not variants or not all(callable(v) for v in variants.values()):
        raise ValueError(f"--variants {path}: the file must define VARIANTS, a non-empty dict of name -> function "
                         "returning a context manager")
    return dict(variants)


def _variant_context(variant: str | None, variants: Variants | None) -> contextlib.AbstractContextManager:
    """The context manager of `variant` (a no-op for None). Raises ValueError for an unknown name."""
    if variant is None:
        return contextlib.nullcontext()
    if not variants or variant not in variants:
        known = ", ".join(sorted(variants or {})) or "none: pass --variants FILE"
        raise ValueError(f"unknown code variant {variant!r} (known: {known})")
    return variants[variant]()


@contextlib.contextmanager
def rule_overrides(dtype: str, overrides: dict[str, int | None]) -> Iterator[None]:
    """Inside the block, the `backend.CONV_RULES` row this CPU takes for `dtype` has `overrides`' fields.

    Programs traced inside follow the changed rule; the table is put back after.

    Raises:
      ValueError: `overrides` given, but no row applies to `dtype` on this CPU.
    """
    if not overrides:
        yield
        return
    rule = backend.conv_rule(dtype)
    if rule is None:
        raise ValueError(f"no CONV_RULES row applies to {dtype} on this CPU (flags: "
                         f"{backend.describe()['cpu_flags']}): there is no rule to change")
    before = backend.CONV_RULES
    backend.CONV_RULES = tuple(row._replace(**overrides) if row is rule else row for row in before)
    try:
        yield
    finally:
        backend.CONV_RULES = before


@contextlib.contextmanager
def cpu_setting(setting: str) -> Iterator[None]:
    """`JAXNETS_CPU_CONV=setting` inside the block (programs traced here follow it), the old value after.

    Raises:
      ValueError: `setting` is not one of `SETTINGS`.
    """
    parse_setting(setting)
    if ":" in setting:
        raise ValueError(f"setting {setting!r}: rule fields belong to `rule_overrides`, not the environment")
    before = os.environ.get(backend.ENV_VAR)
    os.environ[backend.ENV_VAR] = setting
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(backend.ENV_VAR, None)
        else:
            os.environ[backend.ENV_VAR] = before


def compile_step(case: cases.Case, setting: str, variants: Variants | None = None,
                 ) -> tuple[Callable[[], None], dict]:
    """The benchmark's train step for `case`, compiled under `setting`: a call running one step, and what it holds.

    `setting` is a `parse_setting` text: a `JAXNETS_CPU_CONV` value, for `fast` with rule fields changed,
    optionally `@NAME`: traced inside `variants[NAME]()` (a code variant, see the module docstring).

    Returns:
      (`step()`: runs one step on its own state and waits for it; info: `library` (the convolution library
      `backend.conv_library` picks under the setting), `handler_calls` (jaxnets' oneDNN calls in the
      compiled program), `compile_s`).
    """
    setting, variant = split_variant(setting)
    name, overrides = parse_setting(setting)
    with cpu_setting(name), rule_overrides(case.dtype, overrides), _variant_context(variant, variants):
        _, state, batch = cases.case_inputs(case)
        jax.clear_caches()  # the model's functions are traced afresh under this setting
        start = time.perf_counter()
        compiled = backend.jit(cases.train_step(), dtype=case.dtype, donate_argnums=(0,)).lower(state, batch).compile()
        info = {"library": backend.conv_library(case.dtype), "compile_s": time.perf_counter() - start,
                "handler_calls": compiled.as_text().count(HANDLER_TARGET)}
    held = [state]

    def step() -> None:
        held[0], metrics = compiled(held[0], batch)
        jax.block_until_ready(metrics)

    return step, info


def alternate(steps: dict[str, Callable[[], None]], reps: int, steps_per_rep: int, warmup: int = 2,
              ) -> dict[str, list[float]]:
    """Seconds per step of each entry of `steps`, `reps` times, back to back; the order reverses every repetition.

    Every callable first runs `warmup` untimed steps. Returns `{name: [seconds per step, one per repetition]}`.
    """
    if reps < 1 or steps_per_rep < 1:
        raise ValueError(f"reps and steps per repetition must be >= 1 (got {reps}, {steps_per_rep})")
    for step in steps.values():
        for _ in range(warmup):
            step()
    names, times = list(steps), {name: [] for name in steps}
    for rep in range(reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            for _ in range(steps_per_rep):
                steps[name]()
            times[name].append((time.perf_counter() - start) / steps_per_rep)
    return times


def summarize(times: dict[str, list[float]]) -> list[dict]:
    """One row per setting: median ms per step, and against the first setting (the reference) paired by repetition.

    `ratio_median` is the median over repetitions of (this setting's time / the reference's): above 1.0 this
    setting is slower; `faster_in` counts the repetitions where it beat the reference.
    """
    reference, *_ = times
    rows = []
    for name, values in times.items():
        ratios = [v / r for v, r in zip(values, times[reference], strict=True)]
        rows.append({"setting": name, "ms_median": 1e3 * statistics.median(values), "ms_min": 1e3 * min(values),
                     "ratio_median": statistics.median(ratios), "faster_in": sum(r < 1.0 for r in ratios),
                     "reps": len(values)})
    return rows


def table(rows: list[dict], infos: dict[str, dict]) -> str:
    """The summary as a Markdown table."""
    cells = [[r["setting"], infos[r["setting"]]["library"], infos[r["setting"]]["handler_calls"],
              f"{r['ms_median']:,.1f}", f"{r['ms_min']:,.1f}", f"{r['ratio_median']:.3f}",
              f"{r['faster_in']} / {r['reps']}" if i else "reference"] for i, r in enumerate(rows)]
    return report.markdown_table(["setting", "convolutions", "oneDNN calls", "ms / step (median)", "ms (min)",
                                  "time / reference (median of pairs)", "faster than reference in"], cells,
                                 "llrrrrr")


def run(case: cases.Case, settings: tuple[str, ...], reps: int, steps_per_rep: int,
        log: Callable[[str], None] | None = print, variants: Variants | None = None) -> dict:
    """Compile `case`'s train step under each setting, alternate them, summarize. The result is JSON-ready.

    `variants`: the code variants that settings may name after `@` (`load_variants`).
    """
    if len(set(settings)) < 2:
        raise ValueError(f"give at least two different settings to compare (got {settings})")
    for setting in settings:  # every text checked before anything compiles
        text, variant = split_variant(setting)
        parse_setting(text)
        if variant is not None and (not variants or variant not in variants):
            _variant_context(variant, variants)  # raises, naming the known ones
    if reps < 1 or steps_per_rep < 1:  # before anything compiles
        raise ValueError(f"reps and steps per repetition must be >= 1 (got {reps}, {steps_per_rep})")
    steps, infos = {}, {}
    for setting in settings:
        steps[setting], infos[setting] = compile_step(case, setting, variants)
        if log:
            log(f"{setting}: compiled in {infos[setting]['compile_s']:.1f} s, convolutions "
                f"{infos[setting]['library']}, {infos[setting]['handler_calls']} oneDNN calls")
    times = alternate(steps, reps, steps_per_rep)
    return {"case": case._asdict(), "settings": list(settings), "programs": infos, "rows": summarize(times),
            "seconds_per_step": times}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxnets.bench.interleaved", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--settings", default="fast,eigen", help="comma-separated JAXNETS_CPU_CONV values (fast, eigen), "
                   "fast with rule fields changed (fast:eigen_max_batch=32), each optionally @NAME, a code variant "
                   "of --variants; the first is the reference (default: fast,eigen)")
    p.add_argument("--reps", type=int, default=20, help="repetitions (default 20)")
    p.add_argument("--steps", type=int, default=2, help="steps per setting per repetition (default 2)")
    p.add_argument("--variants", default=None, help="a Python file defining VARIANTS = {name: function returning "
                   "a context manager}: code variants that settings name after '@' (fast@old)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    settings = tuple(s.strip() for s in args.settings.split(",") if s.strip())
    try:
        variants = load_variants(args.variants) if args.variants else None
        result = run(cases.Case(model=args.model, what="train", batch_size=args.batch_size, dtype=args.dtype),
                     settings, args.reps, args.steps, variants=variants)
    except ValueError as error:
        p.error(str(error))
    print(f"{args.model} train step, batch {args.batch_size}, {args.dtype}; {args.reps} repetitions of "
          f"{args.steps} steps; {host.machine()['cpu']}; CPU flags: {backend.describe()['cpu_flags']}")
    print(table(result["rows"], result["programs"]))
    if args.json:
        report.write_json(args.json, {"machine": host.machine(), "backend": backend.describe(), **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
