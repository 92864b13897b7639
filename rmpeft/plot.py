"""``rmpeft-plot``: the paper's figures from run records, as PNG and PDF.

    rmpeft-plot lr-curves  [ROOT ...] [--source wandb:ENTITY/PROJECT] [--out DIR] [--metric test|val]
    rmpeft-plot sharpness | distance | epochs  [ROOT ...] [--out DIR]     (Figure 4 panels)

Subcommands are a small registry: ``lr-curves`` (Figure 3) lives here; the Figure 4 panels are
functions ``plot_<name>(records, out_dir)`` of :mod:`rmpeft.analysis.figures`, imported only when
called. Every subcommand shares the record-selection arguments of ``rmpeft-tables``.
"""

from __future__ import annotations

import argparse
import importlib
import math
import re
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmpeft.aggregate import Cell, aggregate
from rmpeft.errors import RmpeftError
from rmpeft.tables import (
    add_source_arguments,
    method_label,
    model_label,
    percent_text,
    runs_from_args,
    task_label,
)

DEFAULT_OUT = Path("results/figures")
FIG_FORMATS = ("png", "pdf")


@dataclass
class Subcommand:
    help: str
    run: Callable[[argparse.Namespace, list[dict[str, Any]], list[Any]], list[Path]]   # (args, records, runs)
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    history: bool = False       # wandb source: also fetch per-epoch curves


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _line_label(cell: Cell) -> str:
    label = method_label(cell.method)
    return f"{label} {percent_text(cell.ratio)}" if cell.ratio is not None else label


def plot_lr_curves(cells: Sequence[Cell], out_dir: Path, metric: str = "test",
                   formats: Sequence[str] = FIG_FORMATS) -> list[Path]:
    """Figure 3: one panel per (model, task); metric (mean over finished seeds, band = ± std) versus
    learning rate on a log axis, one line per method/ratio; ★ marks the best-validation LR, × an LR at
    which some seed diverged. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.transforms import blended_transform_factory

    panels: dict[tuple[str, str], list[Cell]] = defaultdict(list)
    for c in cells:
        panels[(c.model, c.task)].append(c)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for (model, task), group in sorted(panels.items()):
        fig, ax = plt.subplots(figsize=(5.0, 3.6))
        trans = blended_transform_factory(ax.transData, ax.transAxes)
        drew = False
        for c in sorted(group, key=lambda c: (c.method != "ft", c.method, -(c.ratio or math.inf))):
            pts = [(s.lr, getattr(s, f"{metric}_mean"), getattr(s, f"{metric}_std")) for s in c.lrs
                   if getattr(s, f"{metric}_mean") is not None]
            diverged = [s.lr for s in c.lrs if s.diverged]
            if not pts and not diverged:
                continue
            color = None
            if pts:
                xs = [p[0] for p in pts]
                ys = [100 * p[1] for p in pts]
                (line,) = ax.plot(xs, ys, marker="o", ms=3.5, label=_line_label(c))
                color = line.get_color()
                sd = [100 * (p[2] or 0.0) for p in pts]
                ax.fill_between(xs, [y - s for y, s in zip(ys, sd, strict=True)],
                                [y + s for y, s in zip(ys, sd, strict=True)],
                                color=color, alpha=0.15, linewidth=0)
                best = next((p for p in pts if p[0] == c.best_lr), None)
                if best is not None:
                    ax.plot([best[0]], [100 * best[1]], marker="*", ms=11, color=color, zorder=5)
                drew = True
            if diverged:
                ax.plot(diverged, [0.03] * len(diverged), "x", color=color, transform=trans, ms=7,
                        label=None if pts else f"{_line_label(c)} (diverged)")
                drew = True
        if not drew:
            plt.close(fig)
            continue
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        unit = next((c.metric for c in group if c.metric), None) or "metric"
        ax.set_ylabel(f"{metric} {unit} (%)")
        ax.set_title(f"{task_label(task)}, {model_label(model)}")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        stem = f"lr_curves_{_safe(model)}_{_safe(task)}"
        for fmt in formats:
            path = out_dir / f"{stem}.{fmt}"
            fig.savefig(path)
            written.append(path)
        plt.close(fig)
    return written


def _lr_curves_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metric", choices=("test", "val"), default="test",
                   help="y axis: test (default, like the paper) or validation metric")


def _run_lr_curves(args: argparse.Namespace, records: list[dict[str, Any]], runs: list[Any]) -> list[Path]:
    return plot_lr_curves(aggregate(runs, diverged=args.diverged), args.out, metric=args.metric)


def analysis_figure(function: str) -> Callable[..., list[Path]]:
    """A subcommand that calls ``rmpeft.analysis.figures.<function>(records, out_dir)``."""

    def run(args: argparse.Namespace, records: list[dict[str, Any]], runs: list[Any]) -> list[Path]:
        try:
            figures = importlib.import_module("rmpeft.analysis.figures")
        except ModuleNotFoundError as e:
            if e.name not in ("rmpeft.analysis", "rmpeft.analysis.figures"):
                raise
            raise RmpeftError(f"'rmpeft-plot {args.command}' needs rmpeft.analysis.figures, which this "
                              "installation does not have") from e
        fn = getattr(figures, function, None)
        if fn is None:
            raise RmpeftError(f"'rmpeft-plot {args.command}': rmpeft.analysis.figures has no {function}()")
        return list(fn(records, args.out) or [])

    return run


SUBCOMMANDS: dict[str, Subcommand] = {
    "lr-curves": Subcommand("Figure 3: metric versus learning rate, one line per ratio/method, per model and task",
                            _run_lr_curves, _lr_curves_arguments),
    "sharpness": Subcommand("Figure 4(a): Hessian sharpness versus masking ratio", analysis_figure("plot_sharpness")),
    "distance": Subcommand("Figure 4(b): distance from initialisation versus masking ratio",
                           analysis_figure("plot_distance")),
    "epochs": Subcommand("Figure 4(b): metric versus epochs for longer training", analysis_figure("plot_epochs"),
                         history=True),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rmpeft-plot", description="Plot the paper's figures from run records.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name, spec in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=spec.help, description=spec.help)
        add_source_arguments(sp)
        sp.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
        if spec.add_arguments:
            spec.add_arguments(sp)
    return p


def run(argv: Sequence[str] | None = None, api: Any = None) -> int:
    """The command; ``api`` replaces ``wandb.Api()`` (tests)."""
    args = build_parser().parse_args(argv)
    spec = SUBCOMMANDS[args.command]
    pairs, runs = runs_from_args(args, api=api, history=spec.history)
    written = spec.run(args, [rec for _, rec in pairs], runs)
    if not written:
        raise RmpeftError(f"'rmpeft-plot {args.command}': nothing to plot in the selected records")
    for path in written:
        print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(argv)
    except RmpeftError as e:
        print(f"rmpeft-plot: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
