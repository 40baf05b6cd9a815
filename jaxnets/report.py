"""Reports, shared by `fit` and `jaxnets.bench`: strict JSON, markdown tables, PNG plots.

Every file is written through `atomic_path` (a temporary sibling, then a
rename), so a kill never leaves half a file behind. Nothing here imports the
rest of jaxnets: the training loop and the benchmarks both build on it.

    >>> from jaxnets import report
    >>> report.write_json(Path("history.json"), history)       # NaN/inf -> null
    >>> report.plot_history(history, "curves.png", "lenet on digits")
    >>> print(report.speed_table(rows))                         # rows of `jaxnets.bench.run`
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from jaxnets.paths import expand_path

# ----------------------------------------------------------------- files


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields `path` + '.tmp' to write; when the block succeeds, renames it over `path`.

    If the block raises (or the process is killed), `path` keeps its old
    content and the '.tmp' file is left for the next write to replace.
    """
    path = expand_path(path)
    tmp = path.with_name(path.name + ".tmp")
    yield tmp
    os.replace(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename, so a kill never leaves half a file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def json_safe(value: Any) -> Any:
    """Non-finite floats -> None (recursively through dicts, lists and tuples), so the result is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: str | Path, value: Any, *, default: Callable[[Any], Any] | None = None) -> None:
    """Write `value` as indented strict JSON (NaN and infinities become null), atomically.

    Args:
      path: the file to (re)write.
      value: dicts, lists, numbers, strings, None.
      default: called for objects JSON cannot encode (e.g. `str`); None: they raise.

    Raises:
      TypeError: an object JSON cannot encode and no `default`.
      OSError: the file cannot be written (`path` keeps its old content).
    """
    atomic_write_text(path, json.dumps(json_safe(value), indent=2, allow_nan=False, default=default))


def _pyplot():
    import matplotlib  # only the plots need it

    matplotlib.use("Agg", force=False)  # no display needed; a notebook's own backend stays
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Save a matplotlib figure as PNG atomically, then close it. Returns `path` as a `Path`."""
    plt = _pyplot()
    path = expand_path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return path


# ----------------------------------------------------------------- tables


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A markdown table. `align` has one letter per column, 'l' or 'r' (default: all left).

    Raises:
      ValueError: a row or `align` whose length differs from the header's.
    """
    align = align or "l" * len(header)
    if len(align) != len(header) or any(len(r) != len(header) for r in rows):
        raise ValueError(f"markdown_table: every row and `align` must have {len(header)} cells")
    rule = ["---:" if a == "r" else "---" for a in align]
    return "\n".join("| " + " | ".join(str(c) for c in cells) + " |" for cells in (header, rule, *rows))


# ----------------------------------------------------------------- fit: training curves


def plot_history(history: list[dict], path: str | Path, title: str = "") -> Path:
    """Loss and accuracy per epoch (train / held-out / test), and the learning rate when recorded, as a PNG.

    Args:
      history: `fit`'s records, one per epoch (`epoch`, `train_loss`, optional
        `val_loss`, `train_acc`, `val_acc`, `test_acc`, `lr`).
      path: the PNG to (re)write atomically.
      title: the figure's title.
    """
    plt = _pyplot()
    import matplotlib.ticker

    epochs = [h["epoch"] for h in history]
    with_lr = any(h.get("lr") is not None for h in history)
    fig, axes = plt.subplots(1, 3 if with_lr else 2, figsize=(15 if with_lr else 10, 4))
    ax_loss, ax_acc = axes[0], axes[1]
    if with_lr:
        axes[2].plot(epochs, [h.get("lr") for h in history], marker="o", color="tab:purple", label="learning rate")
        axes[2].set(xlabel="epoch", ylabel="learning rate (last step of the epoch)", title="learning rate")
    for key, label in (("train_loss", "train"), ("val_loss", "held-out")):
        if any(h.get(key) is not None for h in history):
            ax_loss.plot(epochs, [h.get(key) for h in history], marker="o", label=label)
    for key, label in (("train_acc", "train"), ("val_acc", "held-out"), ("test_acc", "test")):
        if any(h.get(key) is not None for h in history):
            ax_acc.plot(epochs, [h.get(key) for h in history], marker="o", label=label)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in axes:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[1]:  # a history without accuracies (MSE, BCE) leaves that panel empty
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


# ----------------------------------------------------------------- bench: speed rows
# A row is one case of `jaxnets.bench.run`: model, mode, what, batch_size, and unless 'skipped',
# compile_s, step_s_median/min/max, images_per_s, cpu_util, compilations, optional gflops_per_s and pct_of_peak.

SPEED_HEADER = ("model", "what", "batch", "mode", "compile / first step (s)", "step (ms) median [min-max]", "img/s",
                "GFLOP/s", "% peak", "CPU util", "compiles")
SPEED_ALIGN = "lllrrlrrrrr"


def _number(value: float | None) -> str:
    """A table cell: one decimal, or '-' where the figure is unknown (no FLOP count for the case)."""
    return "-" if value is None else f"{value:.1f}"


def _speed_cells(r: dict) -> list[str]:
    head = [r["model"], r["what"], str(r["batch_size"]), r["mode"]]
    if "skipped" in r:
        return head + [f"skipped: {r['skipped']}"] + [""] * (len(SPEED_HEADER) - len(head) - 1)
    return head + [
        f"{r['compile_s']:.2f}",
        f"{1e3 * r['step_s_median']:.2f} [{1e3 * r['step_s_min']:.2f}-{1e3 * r['step_s_max']:.2f}]",
        f"{r['images_per_s']:,.0f}", _number(r.get("gflops_per_s")), _number(r.get("pct_of_peak")),
        f"{100 * r['cpu_util']:.0f}%", "-" if r["compilations"] is None else str(r["compilations"])]


def speed_table(rows: list[dict]) -> str:
    """A markdown table of benchmark rows, one line per case (skipped cases say why)."""
    return markdown_table(SPEED_HEADER, [_speed_cells(r) for r in rows], SPEED_ALIGN)


def speed_line(row: dict) -> str:
    """One benchmark row as a fixed-width log line (what `bench.run` prints as it goes)."""
    head = f"{row['model']:>9} {row['mode']:>13} {row['what']:>5} b{row['batch_size']:<4}"
    if "skipped" in row:
        return f"{head} skipped: {row['skipped']}"
    return (f"{head} compile/first {row['compile_s']:8.2f}s  step {1e3 * row['step_s_median']:9.2f}ms "
            f"[{1e3 * row['step_s_min']:.2f}-{1e3 * row['step_s_max']:.2f}]  {row['images_per_s']:10,.0f} img/s  "
            f"{row.get('gflops_per_s', float('nan')):7.1f} GFLOP/s "
            f"({row.get('pct_of_peak', float('nan')):4.1f}% peak)  "
            f"cpu {100 * row['cpu_util']:.0f}%")


RATIO_LABELS = (("jit_over_eager", "jit/eager", ".1f"), ("jit_over_xla_default", "jit/jit-xla", ".2f"),
                ("jit_over_best_torch", "jaxnets-jit/best-torch", ".2f"))


def ratio_line(ratio: dict) -> str:
    """One line of `jaxnets.bench.ratios` output: 'mlp train b128:  jit/eager 12.3x  ...' (missing ratios left out).

    A ratio measured over several rounds shows its range too: `jaxnets-jit/best-torch 1.12x [1.05-1.20]`.
    """
    parts = [f"{ratio['model']} {ratio['what']} b{ratio['batch_size']}:"]
    for key, label, spec in RATIO_LABELS:
        if ratio.get(key) is not None:
            low_high = ratio.get(f"{key}_range")  # several rounds: the median, then [min-max] over them
            spread = f" [{low_high[0]:{spec}}-{low_high[1]:{spec}}]" if low_high else ""
            parts.append(f"{label} {ratio[key]:{spec}}x{spread}")
    return "  ".join(parts)


def speed_chart(rows: list[dict], path: str | Path, title: str = "eager vs jit vs PyTorch") -> Path:
    """Bar chart of images/s per (model, what, batch) and mode, log scale, written atomically as a PNG."""
    import numpy as np

    plt = _pyplot()
    done = [r for r in rows if "images_per_s" in r]
    groups = list(dict.fromkeys((r["model"], r["what"], r["batch_size"]) for r in done))
    modes = list(dict.fromkeys(r["mode"] for r in done))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4))
    width = 0.8 / max(1, len(modes))
    for i, mode in enumerate(modes):
        values = [next((r["images_per_s"] for r in done if (r["model"], r["what"], r["batch_size"]) == g
                        and r["mode"] == mode), 0) for g in groups]
        ax.bar(np.arange(len(groups)) + i * width, values, width, label=mode)
    ax.set_xticks(np.arange(len(groups)) + width * (len(modes) - 1) / 2)
    ax.set_xticklabels([f"{m}\n{w} b{b}" for m, w, b in groups])
    ax.set_yscale("log")
    ax.set_ylabel("images / second (log)")
    ax.set_title(title)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


__all__ = ["atomic_path", "atomic_write_text", "json_safe", "markdown_table", "plot_history", "ratio_line",
           "save_figure", "speed_chart", "speed_line", "speed_table", "write_json"]
