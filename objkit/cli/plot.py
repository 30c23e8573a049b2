"""``objkit plot``: training curves of one or more runs from their ``metrics.jsonl``.

Each line of ``RUN_DIR/metrics.jsonl`` is one logged step, ``{"step": 100, "lr": ...,
"mlm/loss": ..., "xlco/accuracy": ..., "eval/tatoeba/acc": ...}``; a key may be absent
from some lines. One subplot per family: each ``*/loss`` key (all runs on the same axes),
the learning rate, the ``*/accuracy`` keys, and the ``eval/*/acc`` keys. matplotlib is an
optional dependency (``pip install 'objkit[plot]'``), imported only when plotting.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click

from objkit.contract.errors import UserError

Series = dict[str, tuple[list[float], list[float]]]  # key -> (steps, values)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of ``run_dir/metrics.jsonl``; UserError when missing, empty or broken."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{path}: no such file (is {run_dir} an objkit run directory?)")
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{lineno}: not JSON ({err.msg})") from None
            if isinstance(obj, dict):
                rows.append(obj)
    if not rows:
        raise UserError(f"{path}: empty (no logged step yet)")
    return rows


def _series(rows: list[dict[str, Any]]) -> Series:
    out: Series = {}
    for i, row in enumerate(rows):
        step = row.get("step", i)
        for key, value in row.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            steps, values = out.setdefault(key, ([], []))
            steps.append(float(step))
            values.append(float(value))
    return out


def _families(keys: set[str]) -> list[tuple[str, list[str]]]:
    """(subplot title, keys) in display order."""
    losses = sorted(k for k in keys if k == "loss" or k.endswith("/loss"))
    fams: list[tuple[str, list[str]]] = [(k, [k]) for k in losses]
    if "lr" in keys:
        fams.append(("learning rate", ["lr"]))
    acc = sorted(k for k in keys if k.endswith("/accuracy") and not k.startswith("eval/"))
    if acc:
        fams.append(("training accuracy", acc))
    evals = sorted(k for k in keys if k.startswith("eval/") and k.endswith("/acc"))
    if evals:
        fams.append(("eval accuracy", evals))
    return fams


def _run_names(run_dirs: list[Path]) -> list[str]:
    names = [p.resolve().name or str(p) for p in run_dirs]
    if len(set(names)) < len(names):  # same leaf name: show parent/name
        names = [f"{p.resolve().parent.name}/{p.resolve().name}" for p in run_dirs]
    return names


def plot_runs(run_dirs: list[Path], out: Path) -> None:
    """Draw the curves of ``run_dirs`` into the image ``out`` (format from its suffix).

    Legend labels are ``RUNNAME: key`` with RUNNAME the run directory's name.
    """
    if not run_dirs:
        raise UserError("objkit plot needs at least one RUN_DIR")
    runs = [(name, _series(read_metrics(d))) for name, d in zip(_run_names(run_dirs), run_dirs)]
    families = _families({k for _, s in runs for k in s})
    if not families:
        raise UserError(
            "nothing to plot: no loss, lr, */accuracy or eval/*/acc key in "
            + ", ".join(str(Path(d) / "metrics.jsonl") for d in run_dirs)
        )
    try:
        # the Agg canvas directly, not pyplot: no global backend switch, no display needed
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("objkit plot needs matplotlib: pip install 'objkit[plot]'") from None

    ncols = 1 if len(families) == 1 else 2
    nrows = math.ceil(len(families) / ncols)
    fig = Figure(figsize=(6.4 * ncols, 3.6 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (title, keys) in zip(axes, families):
        for name, series in runs:
            for key in keys:
                if key in series:
                    steps, values = series[key]
                    ax.plot(steps, values, label=f"{name}: {key}", linewidth=1.2)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        if title == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        ax.legend(fontsize="small")
    for ax in axes[len(families) :]:
        ax.set_visible(False)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(out, dpi=120)
    except ValueError as err:  # unknown image format
        raise UserError(f"{out}: {err}") from None


@click.command("plot", epilog="""\b
Examples:
  objkit plot runs/mlm -o mlm.png
  objkit plot runs/mlm runs/mlm+xlco -o compare.png
  objkit plot runs/* -o all.pdf
""")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path),
              required=True, help="Image to write (.png, .pdf, .svg).")  # fmt: skip
def plot_command(run_dirs: tuple[Path, ...], output: Path) -> None:
    """Plot the training curves of one or more runs (RUN_DIR/metrics.jsonl).

    One subplot per loss key (the same key of every run on shared axes), then the learning
    rate, training accuracies (*/accuracy) and evaluation accuracies (eval/*/acc).
    Needs matplotlib: pip install 'objkit[plot]'.
    """
    plot_runs(list(run_dirs), output)
    click.echo(f"wrote {output}")
