"""The eager vs jit plot of the docs, drawn from the README's latest benchmark table (the one source of its numbers).

At `builder-inited` this reads the Markdown table between `<!-- bench-table:start -->` and `<!-- bench-table:end -->`
in README.md and writes `docs/_generated/train-step.png`: images/s per model at the largest batch, one bar per
mode the table has (of eager, jit, torch eager, torch.compile), on a log axis (eager and jit differ by up to 30x).
"""

from __future__ import annotations

import re
from pathlib import Path

MODES = ("eager", "jit", "torch eager", "torch.compile")


def read_table(readme: Path) -> tuple[list[str], list[list[str]]]:
    """The header and rows of the README's benchmark table, cells stripped of Markdown emphasis."""
    text = readme.read_text()
    block = text.split("<!-- bench-table:start -->", 1)[1].split("<!-- bench-table:end -->", 1)[0]
    lines = [line for line in block.splitlines() if line.startswith("|")]
    if len(lines) < 3:
        raise ValueError(f"{readme}: no benchmark table between the bench-table markers")
    cells = [[cell.strip().strip("*") for cell in line.strip("|").split("|")] for line in lines]
    return cells[0], cells[2:]


def column_of(header: list[str], mode: str) -> int | None:
    """The first column named `mode`, or `mode` plus a note in parentheses (`jit (jax 0.12)`); None if absent."""
    for index, name in enumerate(header):
        if name == mode or name.startswith(mode + " ("):
            return index
    return None


def plot(readme: Path, out: Path) -> None:
    """Write the bar chart of the table's largest batch to `out` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    header, rows = read_table(readme)
    largest = max(int(row[header.index("batch")]) for row in rows)
    rows = [row for row in rows if int(row[header.index("batch")]) == largest]
    models = [row[0] for row in rows]
    columns = {mode: column_of(header, mode) for mode in MODES}
    columns = {mode: index for mode, index in columns.items() if index is not None}
    if not columns:
        raise ValueError(f"{readme}: the benchmark table has none of the columns {MODES}")
    fig, ax = plt.subplots(figsize=(9, 3.6))
    width = 0.8 / len(columns)
    for i, index in enumerate(columns.values()):
        values = [float(re.sub(r"[^\d.]", "", row[index])) for row in rows]
        ax.bar(np.arange(len(models)) + (i - (len(columns) - 1) / 2) * width, values, width, label=header[index])
    ax.set(xticks=np.arange(len(models)), xticklabels=models, yscale="log",
           ylabel="train images/s (log)", title=f"train step, batch {largest}: the README's latest benchmark")
    ax.legend(ncols=len(columns), fontsize="small")
    fig.tight_layout()
    out.parent.mkdir(exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _draw(app) -> None:
    srcdir = Path(app.srcdir)
    plot(srcdir.parent / "README.md", srcdir / "_generated" / "train-step.png")


def setup(app):
    app.connect("builder-inited", _draw)
    return {"parallel_read_safe": True}
