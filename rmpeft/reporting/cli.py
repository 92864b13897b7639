"""The ``rmpeft-tables`` and ``rmpeft-plot`` commands.

    rmpeft-tables [ROOT ...] [--source wandb:ENTITY/PROJECT] [--table main|structured|lr-masking|
                  lr-baselines|vision|lr-auto|compute|all] [--format markdown|latex|csv] [--compare-paper]
                  [--json] [--out DIR] [--name EXP] [--model M] [--task T] [--method M]
                  [--predict-ratio R] [--diverged skip-lr|drop-seed] [--select val|test|both]
                  [--lr-auto FILE] [--lr-auto-estimator NAME]
    rmpeft-plot lr-curves  [ROOT ...] [--source wandb:ENTITY/PROJECT] [--out DIR] [--metric test|val]
    rmpeft-plot share-curve | structured-vs-random  [ROOT ...] [--out DIR]   (Figures 1 and 5)
    rmpeft-plot lr-prediction  [ROOT ...] [--lr-auto FILE] [--out DIR]      (predicted against best LR)
    rmpeft-plot sharpness | distance | epochs  [ROOT ...] [--out DIR]     (Figure 4 panels)

Both share the record-selection arguments (:func:`add_source_arguments`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmpeft.errors import RmpeftError
from rmpeft.lr_auto.estimators import ESTIMATORS
from rmpeft.records import RunRecord
from rmpeft.reporting import figures
from rmpeft.reporting.aggregate import DIVERGED_POLICIES, SELECTIONS, aggregate
from rmpeft.reporting.compute import COMPUTE_TABLE, render_compute_table
from rmpeft.reporting.lr_curves import plot_lr_curves
from rmpeft.reporting.lr_prediction import (
    LR_AUTO_TABLE,
    prediction_rows,
    read_evaluation,
    render_prediction_table,
)
from rmpeft.reporting.paper import PaperNumbers, parse_ratio
from rmpeft.reporting.prediction_figure import plot_lr_prediction
from rmpeft.reporting.render import FORMAT_SUFFIX, FORMATS, RENDERERS
from rmpeft.reporting.runs import RunResult, run_from_record
from rmpeft.reporting.share_figures import plot_share_curve, plot_structured_vs_random
from rmpeft.reporting.sources import SOURCES_HELP, load_records
from rmpeft.reporting.tables import TABLES, build_tables, cells_json, flag_lines
from rmpeft.validation import check_writable_folder

DEFAULT_FIGURES = Path("results/figures")


# --------------------------------------------------------------------------------------------------
# Selecting records (shared).


def _split(values: Sequence[str] | None) -> set[str] | None:
    if not values:
        return None
    return {v.strip() for arg in values for v in arg.split(",") if v.strip()}


def select_runs(runs: Iterable[RunResult], name: Sequence[str] | None = None, model: Sequence[str] | None = None,
                task: Sequence[str] | None = None, method: Sequence[str] | None = None) -> list[RunResult]:
    """Runs matching every given filter (each a list of values, comma-separated values allowed)."""
    f = {"experiment": _split(name), "model": _split(model), "task": _split(task), "method": _split(method)}
    return [r for r in runs if all(allowed is None or getattr(r, attr) in allowed for attr, allowed in f.items())]


def add_source_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments shared by rmpeft-tables and rmpeft-plot: where the records are and which to use."""
    p.add_argument("roots", nargs="*", default=["results/runs"],
                   help="results folders to read records from (default: results/runs)")
    p.add_argument("--source", default="disk", help=SOURCES_HELP)
    p.add_argument("--name", action="append", help="only this experiment (config `name`); repeatable")
    p.add_argument("--model", action="append", help="only this model (e.g. opt-125m); repeatable")
    p.add_argument("--task", action="append", help="only this task (e.g. rte); repeatable")
    p.add_argument("--method", action="append", help="only this method (e.g. masking); repeatable")
    p.add_argument("--diverged", choices=DIVERGED_POLICIES, default="skip-lr",
                   help="skip-lr: an LR at which a seed diverged cannot be best (default); "
                        "drop-seed: average the seeds that finished")


def runs_from_args(args: argparse.Namespace, api: Any = None, history: bool = False,
                   warn: Callable[[str], None] | None = None) -> tuple[list[tuple[str, RunRecord]], list[RunResult]]:
    """The records and their runs selected by the shared arguments. A record that cannot be read
    (corrupt) or used (invalid: e.g. ``finished`` without numeric metrics) is reported through ``warn``
    (default: one line on stderr, with its path and why) and left out; the others are used."""
    warn = warn or (lambda text: print(text, file=sys.stderr))

    def report(problem: str) -> None:
        warn(f"warning: {problem}; skipped")

    pairs, runs = [], []
    for src, rec in load_records(args.roots, args.source, api=api, history=history, report=report):
        try:
            run = run_from_record(rec, src)
        except RmpeftError as e:
            report(str(e))
            continue
        pairs.append((src, rec))
        runs.append(run)
    selected = select_runs(runs, args.name, args.model, args.task, args.method)
    if not selected:
        where = args.source if args.source not in (None, "disk") else ", ".join(map(str, args.roots))
        filters = {"name": ("experiment", args.name), "model": ("model", args.model), "task": ("task", args.task),
                   "method": ("method", args.method)}
        for option, (attr, wanted) in filters.items():   # the first filter that alone matches nothing
            if wanted and not select_runs(runs, **{option: wanted}):
                there = sorted({str(getattr(r, attr)) for r in runs})
                raise RmpeftError(f"--{option} {','.join(wanted)} matches no record in {where}; "
                                  f"{option}s there: {', '.join(there)}")
        raise RmpeftError(f"no run records match in {where}" + (" (after filters)" if runs else ""))
    keep = {id(r) for r in selected}
    return [pair for pair, r in zip(pairs, runs, strict=True) if id(r) in keep], selected


def check_out_folder(out: Path) -> None:
    """``--out`` must be a folder or a path where one can be created (checked before any work)."""
    check_writable_folder(out, f"--out {out}")


def make_out_folder(out: Path) -> None:
    """Create ``--out``; a failure is one line."""
    check_out_folder(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RmpeftError(f"--out {out}: cannot create the folder ({e.strerror}); expected a writable folder") from None


def _main(prog: str, run: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None) -> int:
    try:
        return run(argv)
    except RmpeftError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # stdout closed early (`rmpeft-tables | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


# --------------------------------------------------------------------------------------------------
# rmpeft-tables


def tables_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rmpeft-tables",
        description="Regenerate the paper's tables from run records: best LR on validation, test metric "
                    "mean ± std over seeds, flags for grids that need extending.",
    )
    add_source_arguments(p)
    p.add_argument("--table", action="append", choices=TABLES + (LR_AUTO_TABLE, COMPUTE_TABLE, "all"),
                   help="which table (default: all that have rows); repeatable. lr-auto: the predicted LR "
                        "(optim.lr=auto runs, or --lr-auto) against the grid's best per cell; compute (only "
                        "when named, not part of all): hours of wall time per method and task")
    p.add_argument("--lr-auto", type=Path, default=None, metavar="FILE",
                   help="the JSON of `rmpeft-lr --evaluate` for the lr-auto table (cells without lr=auto runs)")
    p.add_argument("--lr-auto-estimator", default=None, choices=tuple(ESTIMATORS),
                   help="the estimator of --lr-auto shown (default: the one with the best hit rate)")
    p.add_argument("--format", choices=FORMATS, default="markdown", help="stdout format (default markdown)")
    p.add_argument("--compare-paper", action="store_true",
                   help="put the paper's number and ours − paper beside each cell")
    p.add_argument("--paper-dir", type=Path, default=None,
                   help="folder of the paper's CSVs (default: the numbers shipped with rmpeft)")
    p.add_argument("--json", action="store_true",
                   help="print the cells as a JSON list instead of tables (metrics as fractions, like records)")
    p.add_argument("--out", type=Path, default=None,
                   help="also write every table as .md/.tex/.csv plus cells.json and flags.txt into this folder")
    p.add_argument("--select", choices=SELECTIONS + ("both",), default="val",
                   help="which mean metric picks each cell's learning rate: val (default), test (the paper's "
                        "apparent practice; every output says so), or both (each table twice; with "
                        "--compare-paper shows how much selecting on test moves each cell)")
    p.add_argument("--predict-ratio", action="append", default=None, metavar="R",
                   help="masking ratio (0.0002 or 0.02%%) for which to predict the best LR; repeatable "
                        "(default: the paper's ratios not yet swept)")
    return p


def run_tables(argv: Sequence[str] | None = None, api: Any = None, stdout: Any = None, stderr: Any = None) -> int:
    """``rmpeft-tables``; ``api`` replaces ``wandb.Api()`` (tests)."""
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    args = tables_parser().parse_args(argv)
    if args.out is not None:
        check_out_folder(args.out)
    _, runs = runs_from_args(args, api=api, warn=lambda text: print(f"rmpeft-tables: {text}", file=stderr))
    selections = list(SELECTIONS) if args.select == "both" else [args.select]
    paper = PaperNumbers.load(args.paper_dir) if args.compare_paper else None
    which = list(TABLES) + [LR_AUTO_TABLE] if not args.table or "all" in args.table else list(dict.fromkeys(args.table))
    ratios = [parse_ratio(r) for r in args.predict_ratio] if args.predict_ratio else None
    evaluation = read_evaluation(args.lr_auto) if args.lr_auto is not None else None
    predictions = prediction_rows(runs, evaluation, args.lr_auto_estimator) if LR_AUTO_TABLE in which else []
    if args.table and LR_AUTO_TABLE in args.table and not predictions:
        print(f"rmpeft-tables: {LR_AUTO_TABLE} table: " + ("no optim.lr=auto runs and no --lr-auto evaluation"
              if evaluation is None else "no cell of the records has a prediction") + ": nothing to show", file=stderr)
    compute = render_compute_table(runs, args.format) if COMPUTE_TABLE in which else ""
    runs = [r for r in runs if not r.lr_auto]   # optim.lr=auto runs appear in the lr-auto table only
    cells, tables, files = [], [], []
    table_names = [w for w in which if w not in (LR_AUTO_TABLE, COMPUTE_TABLE)]
    for select in selections if table_names else ():   # test-selected tables follow the validation-selected ones
        these = aggregate(runs, diverged=args.diverged, select=select) if runs else []
        cells += these
        built = build_tables(these, table_names, ratios)
        tables += built
        files += [f"{t.name}{'' if select == 'val' else '-test-selected'}" for t in built]
    flags = flag_lines(cells)

    if args.out is not None:
        make_out_folder(args.out)
        for t, stem in zip(tables, files):
            for fmt, render in RENDERERS.items():
                (args.out / f"{stem}.{FORMAT_SUFFIX[fmt]}").write_text(render(t, paper))
        for fmt in RENDERERS if predictions else ():
            (args.out / f"{LR_AUTO_TABLE}.{FORMAT_SUFFIX[fmt]}").write_text(render_prediction_table(predictions, fmt))
        for fmt in RENDERERS if compute else ():
            (args.out / f"{COMPUTE_TABLE}.{FORMAT_SUFFIX[fmt]}").write_text(render_compute_table(runs, fmt))
        (args.out / "cells.json").write_text(json.dumps(cells_json(cells, paper), indent=2) + "\n")
        (args.out / "flags.txt").write_text("".join(f + "\n" for f in flags))
        print(f"wrote {len(tables)} table(s) x {len(RENDERERS)} formats, cells.json and flags.txt to {args.out}",
              file=stderr)

    if args.json:
        print(json.dumps(cells_json(cells, paper), indent=2), file=stdout)
        return 0
    render = RENDERERS[args.format]
    print("\n".join([render(t, paper) for t in tables]
                    + ([render_prediction_table(predictions, args.format)] if predictions else [])
                    + ([compute] if compute else [])), end="", file=stdout)
    if flags:
        if args.format == "markdown":
            print("\n### Flags\n\n" + "".join(f"- {f}\n" for f in flags), end="", file=stdout)
        else:
            print("".join(f"flag: {f}\n" for f in flags), end="", file=stderr)
    return 0


def tables_main(argv: Sequence[str] | None = None) -> int:
    return _main("rmpeft-tables", run_tables, argv)


# --------------------------------------------------------------------------------------------------
# rmpeft-plot: a small registry of subcommands.

Records = list[tuple[str, RunRecord]]


@dataclass
class Subcommand:
    help: str
    run: Callable[[argparse.Namespace, Records, list[RunResult]], list[Path]]   # (args, records, runs)
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    history: bool = False       # wandb source: also fetch per-epoch curves


def _lr_curves_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metric", choices=("test", "val"), default="test",
                   help="y axis: test (default, like the paper) or validation metric")


def _run_lr_curves(args: argparse.Namespace, records: Records, runs: list[RunResult]) -> list[Path]:
    return plot_lr_curves(aggregate(runs, diverged=args.diverged), args.out, metric=args.metric)


def figure4(function: str) -> Callable[[argparse.Namespace, Records, list[RunResult]], list[Path]]:
    """A subcommand that calls ``rmpeft.reporting.figures.<function>(records, out_dir)``."""

    def run(args: argparse.Namespace, records: Records, runs: list[RunResult]) -> list[Path]:
        return list(getattr(figures, function)([rec for _, rec in records], args.out) or [])

    return run


def cell_figure(function: Callable[..., list[Path]]) -> Callable[[argparse.Namespace, Records, list[RunResult]], list[Path]]:
    """A subcommand that draws ``function(cells, out_dir)`` from the table cells of the selected runs."""

    def run(args: argparse.Namespace, records: Records, runs: list[RunResult]) -> list[Path]:
        return function(aggregate(runs, diverged=args.diverged, select=args.select), args.out)

    return run


def _lr_prediction_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lr-auto", type=Path, default=None, metavar="FILE",
                   help="the JSON of `rmpeft-lr --evaluate` (cells without optim.lr=auto runs)")
    p.add_argument("--lr-auto-estimator", default=None, choices=tuple(ESTIMATORS),
                   help="the estimator of --lr-auto shown (default: the one with the most hits)")


def _run_lr_prediction(args: argparse.Namespace, records: Records, runs: list[RunResult]) -> list[Path]:
    evaluation = read_evaluation(args.lr_auto) if args.lr_auto is not None else None
    return plot_lr_prediction(prediction_rows(runs, evaluation, args.lr_auto_estimator), args.out)


def _select_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--select", choices=SELECTIONS, default="val",
                   help="the metric that picks each cell's learning rate: val (default) or test (the paper's practice)")


SUBCOMMANDS: dict[str, Subcommand] = {
    "lr-curves": Subcommand("Figure 3: metric versus learning rate, one line per ratio/method, per model and task",
                            _run_lr_curves, _lr_curves_arguments),
    "share-curve": Subcommand("Figure 1: average test score over tasks versus trainable share, per model",
                              cell_figure(plot_share_curve), _select_argument),
    "structured-vs-random": Subcommand("Figure 5: Structured versus Random Masking across shares, per task",
                                       cell_figure(plot_structured_vs_random), _select_argument),
    "lr-prediction": Subcommand("the LR predicted before training (optim.lr=auto runs or --lr-auto) against the "
                                "grid's best validation LR, per cell", _run_lr_prediction, _lr_prediction_arguments),
    "sharpness": Subcommand("Figure 4(a): Hessian sharpness versus masking ratio", figure4("plot_sharpness")),
    "distance": Subcommand("Figure 4(b): distance from initialisation versus masking ratio",
                           figure4("plot_distance")),
    "epochs": Subcommand("Figure 4(b): metric versus epochs for longer training", figure4("plot_epochs"),
                         history=True),
}


def plot_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rmpeft-plot", description="Plot the paper's figures from run records.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name, spec in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=spec.help, description=spec.help)
        add_source_arguments(sp)
        sp.add_argument("--out", type=Path, default=DEFAULT_FIGURES, help=f"output folder (default {DEFAULT_FIGURES})")
        if spec.add_arguments:
            spec.add_arguments(sp)
    return p


def run_plot(argv: Sequence[str] | None = None, api: Any = None) -> int:
    """``rmpeft-plot``; ``api`` replaces ``wandb.Api()`` (tests)."""
    args = plot_parser().parse_args(argv)
    spec = SUBCOMMANDS[args.command]
    check_out_folder(args.out)
    pairs, runs = runs_from_args(args, api=api, history=spec.history,
                                 warn=lambda text: print(f"rmpeft-plot: {text}", file=sys.stderr))
    existed = args.out.exists()
    make_out_folder(args.out)
    try:
        written = spec.run(args, pairs, runs)
        if not written:
            raise RmpeftError(f"'rmpeft-plot {args.command}': nothing to plot in the selected records")
    except BaseException:
        if not existed and args.out.is_dir() and not any(args.out.iterdir()):
            args.out.rmdir()   # leave no trace of a command that drew nothing
        raise
    for path in written:
        print(path)
    return 0


def plot_main(argv: Sequence[str] | None = None) -> int:
    return _main("rmpeft-plot", run_plot, argv)

