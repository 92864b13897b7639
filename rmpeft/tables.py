"""``rmpeft-tables``: the paper's tables regenerated from run records, beside the paper's numbers.

    rmpeft-tables [ROOT ...] [--source wandb:ENTITY/PROJECT] [--table main|structured|lr-masking|
                  lr-baselines|all] [--format markdown|latex|csv] [--compare-paper] [--json]
                  [--out DIR] [--name EXP] [--model M] [--task T] [--method M]
                  [--predict-ratio R] [--diverged skip-lr|drop-seed]

Tables (rows x the tasks as columns):
  main          Table 1/5: test metric at the best validation LR, mean ± std over seeds, with Avg
  structured    Table 8: the same for Structured Masking
  lr-masking    Tables 6/9: the best LR of each masking ratio, plus the LR predicted by the fitted
                power law for ratios not swept
  lr-baselines  Table 7: the best LR of full fine-tuning and the PEFT baselines
Aggregation (best-LR choice, flags, predictor) lives in :mod:`rmpeft.aggregate`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rmpeft.aggregate import (
    DIVERGED_POLICIES,
    Cell,
    Run,
    aggregate,
    fit_lr_scaling,
    runs_from_records,
)
from rmpeft.errors import RmpeftError, unknown_choice

# --------------------------------------------------------------------------------------------------
# Names: ours (config choices) -> the paper's.

TASKS = {  # in the paper's column order
    "sst2": "SST-2", "rte": "RTE", "wsc": "WSC", "wic": "WiC", "cb": "CB", "boolq": "BoolQ",
    "multirc": "MultiRC", "copa": "COPA", "record": "ReCoRD", "squad": "SQuAD", "drop": "DROP",
}
MODELS = {"opt-125m": "OPT-125m", "opt-1.3b": "OPT-1.3b", "opt-13b": "OPT-13b", "llama2-7b": "Llama2-7b"}
METHODS = {  # in the paper's row order
    "ft": "FT", "adapter": "Adapter", "lora": "LoRA", "adalora": "AdaLoRA", "prefix": "Prefix",
    "bitfit": "BitFit", "masking": "Masking", "structured_masking": "Masking(S)",
}
MASKING_METHODS = ("masking", "structured_masking")
# The trainable shares the paper sweeps (Table 5); the default ratios the predictor fills in.
PAPER_RATIOS = (0.1, 0.05, 0.01, 0.005, 0.001, 0.0005, 0.0001, 0.00005, 0.00001)
TABLES = ("main", "structured", "lr-masking", "lr-baselines")
FORMATS = ("markdown", "latex", "csv")
FORMAT_SUFFIX = {"markdown": "md", "latex": "tex", "csv": "csv"}
DEFAULT_PAPER_DIRS = (Path(__file__).resolve().parent.parent / "results" / "paper", Path("results/paper"))


def task_label(task: str) -> str:
    return TASKS.get(task, task)


def model_label(model: str) -> str:
    return MODELS.get(model, model)


def method_label(method: str) -> str:
    return METHODS.get(method, method)


def percent_text(share: float) -> str:
    """A trainable share as the paper prints it: 0.001 -> '0.1%', 1.0 -> '100%'."""
    return f"{share * 100:g}%"


def share_text(share: float | None) -> str:
    """A measured trainable share (baselines): '100%' or three decimals like the paper ('0.235%')."""
    if share is None:
        return ""
    return "100%" if share >= 0.99995 else f"{share * 100:.3f}%"


def parse_ratio(text: str) -> float:
    """'0.0002' or '0.02%' -> 0.0002."""
    t = text.strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError as e:
        raise RmpeftError(f"bad ratio '{text}'; expected a fraction (0.0002) or a percentage (0.02%)") from e
    if not 0 < value <= 1:
        raise RmpeftError(f"bad ratio '{text}'; must lie in (0, 1] (or (0%, 100%])")
    return value


def lr_text(lr: float | None) -> str:
    return "" if lr is None else f"{lr:g}"


def task_order(tasks: Iterable[str]) -> list[str]:
    """The paper's column order, then other tasks alphabetically."""
    known = list(TASKS)
    return sorted(set(tasks), key=lambda t: (known.index(t) if t in known else len(known), t))


def _model_key(model: str) -> tuple[int, str]:
    known = list(MODELS)
    return (known.index(model) if model in known else len(known), model)


def _row_key(model: str, method: str, ratio: float | None) -> tuple:
    known = list(METHODS)
    return (_model_key(model), known.index(method) if method in known else len(known), method,
            -(ratio if ratio is not None else math.inf))


# --------------------------------------------------------------------------------------------------
# The paper's numbers (results/paper/*.csv, copied cell by cell from the paper).


@dataclass
class PaperRow:
    model: str              # paper label, e.g. OPT-125m
    method: str             # our method name
    share: float | None     # params column as a fraction
    values: dict[str, float]  # our task name -> percent
    avg: float | None


class PaperNumbers:
    """Lookup of the paper's printed numbers by (model, method, ratio)."""

    FILES = ("table5_main.csv", "table8_structured.csv")

    def __init__(self, rows: list[PaperRow]):
        self.rows = rows

    @classmethod
    def load(cls, folder: Path | None = None) -> PaperNumbers:
        folders = [Path(folder)] if folder is not None else list(DEFAULT_PAPER_DIRS)
        for d in folders:
            if all((d / f).exists() for f in cls.FILES):
                return cls([row for f in cls.FILES for row in cls._read(d / f)])
        raise RmpeftError(f"the paper's tables ({', '.join(cls.FILES)}) are not in {' or '.join(map(str, folders))}; "
                          "pass --paper-dir")

    @staticmethod
    def _read(path: Path) -> list[PaperRow]:
        by_label = {v: k for k, v in TASKS.items()}
        rows = []
        with open(path, newline="") as f:
            for line in csv.DictReader(f):
                params = (line.get("params") or "").strip()
                share = float(params.rstrip("%")) / 100 if params.endswith("%") else None
                values = {by_label[k]: float(v) for k, v in line.items() if k in by_label and v not in (None, "")}
                avg = line.get("avg")
                rows.append(PaperRow(line["model"], line["method"], share, values, float(avg) if avg else None))
        return rows

    def lookup(self, model: str, method: str, ratio: float | None) -> PaperRow | None:
        """The paper's row for our (model, method, ratio); baselines match on (model, method)."""
        label = model_label(model)
        for row in self.rows:
            if row.model != label or row.method != method:
                continue
            if ratio is None or (row.share is not None and math.isclose(row.share, ratio, rel_tol=1e-6)):
                return row
        return None


# --------------------------------------------------------------------------------------------------
# Tables: rows of cells, independent of the output format.


@dataclass
class Row:
    model: str
    method: str
    ratio: float | None
    cells: dict[str, Cell]                      # task -> cell
    predicted: dict[str, float] | None = None   # task -> predicted LR (predictor rows only)

    @property
    def params(self) -> str:
        if self.ratio is not None:
            return percent_text(self.ratio) + (" (pred.)" if self.predicted is not None else "")
        shares = [c.trainable_share for c in self.cells.values() if c.trainable_share is not None]
        return share_text(statistics.fmean(shares) if shares else None)

    def avg(self, tasks: Sequence[str]) -> float | None:
        """Mean test metric over the table's tasks; None unless the row has every one of them."""
        vals = [self.cells[t].test_mean if t in self.cells else None for t in tasks]
        return None if not vals or any(v is None for v in vals) else statistics.fmean(vals)  # type: ignore[arg-type]


@dataclass
class Table:
    name: str
    title: str
    kind: str                 # "metric" | "lr"
    tasks: list[str]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)


def _rows(cells: Iterable[Cell]) -> list[Row]:
    rows: dict[tuple, Row] = {}
    for c in cells:
        key = (c.model, c.method, c.ratio)
        rows.setdefault(key, Row(c.model, c.method, c.ratio, {})).cells[c.task] = c
    return [rows[k] for k in sorted(rows, key=lambda k: _row_key(*k))]


def build_tables(
    cells: list[Cell], which: Sequence[str] = TABLES, predict_ratios: Sequence[float] | None = None
) -> list[Table]:
    """The requested tables that have rows. ``predict_ratios`` (lr-masking): ratios for which to
    show the predicted LR; default: the paper's ratios that were not swept for that model/method."""
    out = []
    for name in which:
        if name not in TABLES:
            raise unknown_choice("table", name, TABLES + ("all",))
        if name == "main":
            sel = [c for c in cells if c.method != "structured_masking"]
            title, kind = "Table 1/5: test metric (%) at the best validation LR, mean ± std over seeds", "metric"
        elif name == "structured":
            sel = [c for c in cells if c.method == "structured_masking"]
            title, kind = "Table 8: Structured Masking, test metric (%) at the best validation LR", "metric"
        elif name == "lr-masking":
            sel = [c for c in cells if c.method in MASKING_METHODS]
            title, kind = "Tables 6/9: best learning rate, masking", "lr"
        else:
            sel = [c for c in cells if c.method not in MASKING_METHODS]
            title, kind = "Table 7: best learning rate, baselines", "lr"
        if not sel:
            continue
        table = Table(name, title, kind, task_order(c.task for c in sel), _rows(sel))
        if name == "lr-masking":
            _add_predictions(table, sel, predict_ratios)
        out.append(table)
    return out


def _add_predictions(table: Table, cells: list[Cell], predict_ratios: Sequence[float] | None) -> None:
    for fit in fit_lr_scaling(cells):
        table.notes.append("Fit " + fit.describe())
        if fit.slope is None:
            continue
        swept = {c.ratio for c in cells if c.model == fit.model and c.method == fit.method}
        ratios = predict_ratios if predict_ratios else [
            r for r in PAPER_RATIOS if not any(math.isclose(r, s, rel_tol=1e-6) for s in swept if s is not None)]
        for ratio in ratios:
            pred = {t: fit.predict(ratio, t) for t in table.tasks if t in fit.intercepts}
            row = Row(fit.model, fit.method, ratio, {}, {t: v for t, v in pred.items() if v is not None})
            table.rows.append(row)
            pooled = fit.predict(ratio)
            table.notes.append(f"Predicted best lr for {model_label(fit.model)} {method_label(fit.method)} at "
                               f"{percent_text(ratio)}: {pooled:.2g} (tasks' mean); centre the grid there")
    table.rows.sort(key=lambda r: _row_key(r.model, r.method, r.ratio) + (r.predicted is not None,))


# --------------------------------------------------------------------------------------------------
# Rendering.

EDGE_MARK, INCOMPLETE_MARK = "†", "*"
INCOMPLETE_KINDS = ("missing-seeds", "missing-lr", "diverged", "failed", "running", "no-best")


def _marks(cell: Cell) -> str:
    kinds = {f.kind for f in cell.flags}
    return (EDGE_MARK if "edge" in kinds else "") + (INCOMPLETE_MARK if kinds & set(INCOMPLETE_KINDS) else "")


def _pct(x: float | None, digits: int = 1) -> str:
    return "" if x is None else f"{100 * x:.{digits}f}"


def _metric_text(cell: Cell, paper: float | None, compare: bool, latex: bool) -> str:
    if cell.test_mean is None:
        text = "—" if not latex else "--"
    else:
        pm = r"$\pm$" if latex else " ± "
        text = _pct(cell.test_mean) + ("" if cell.test_std is None else pm + _pct(cell.test_std))
    if compare:
        text += f" ({_paper_diff(cell.test_mean, paper, latex)})"
    return text


def _paper_diff(ours: float | None, paper: float | None, latex: bool, digits: int = 1) -> str:
    if paper is None:
        return "paper n/a"
    if ours is None:
        return f"{paper:.{digits}f}"
    diff = 100 * ours - paper
    sign = ("$-$" if latex else "-") if diff < 0 else "+"
    return f"{paper:.{digits}f}, {sign}{abs(diff):.{digits}f}"


def paper_avg(prow: PaperRow | None, tasks: Sequence[str]) -> float | None:
    """The paper's Avg over ``tasks``: its own printed Avg when the table has all 11 tasks, else
    the mean of its printed cells for those tasks."""
    if prow is None or not tasks or any(t not in prow.values for t in tasks):
        return None
    if set(tasks) == set(TASKS) and prow.avg is not None:
        return prow.avg
    return statistics.fmean(prow.values[t] for t in tasks)


def table_matrix(table: Table, paper: PaperNumbers | None, latex: bool = False) -> list[list[str]]:
    """Header plus one list of strings per row (what Markdown and LaTeX print)."""
    compare = paper is not None
    header = ["Model", "Method", "Params"] + [task_label(t) for t in table.tasks]
    if table.kind == "metric":
        header.append("Avg")
    out = [header]
    for row in table.rows:
        line = [model_label(row.model), method_label(row.method), row.params]
        prow = paper.lookup(row.model, row.method, row.ratio) if compare else None  # type: ignore[union-attr]
        for t in table.tasks:
            if row.predicted is not None:
                line.append(f"~{row.predicted[t]:.2g}" if t in row.predicted else "")
            elif t not in row.cells:
                line.append("")
            elif table.kind == "lr":
                c = row.cells[t]
                line.append(lr_text(c.best_lr) + _marks(c) if c.best_lr is not None else "—" + _marks(c))
            else:
                c = row.cells[t]
                line.append(_metric_text(c, prow.values.get(t) if prow else None, compare, latex) + _marks(c))
        if table.kind == "metric":
            avg = row.avg(table.tasks)
            text = _pct(avg, 2)
            if compare:
                text += f" ({_paper_diff(avg, paper_avg(prow, table.tasks), latex, digits=2)})"
            line.append(text)
        out.append(line)
    return out


def legend(table: Table, compare: bool) -> str:
    parts = []
    if table.kind == "metric":
        parts.append("cells: test metric in % at the LR with the best mean validation metric, mean ± std over seeds")
        if compare:
            parts.append("(paper's number, ours − paper)")
    else:
        parts.append("cells: learning rate with the best mean validation metric")
        if any(r.predicted is not None for r in table.rows):
            parts.append("~x: predicted by the power-law fit (see below)")
    parts.append(f"{EDGE_MARK} best LR at the edge of its grid; {INCOMPLETE_MARK} incomplete (see flags)")
    return "; ".join(parts)


def render_markdown(table: Table, paper: PaperNumbers | None) -> str:
    m = table_matrix(table, paper)
    lines = [f"### {table.title}", "", "| " + " | ".join(m[0]) + " |",
             "|" + "|".join("---" if i < 3 else "---:" for i in range(len(m[0]))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in m[1:]]
    lines += ["", legend(table, paper is not None) + "."]
    lines += [f"{n}." if not n.endswith(".") else n for n in table.notes]
    return "\n".join(lines) + "\n"


def _latex_escape(s: str) -> str:
    if "$" in s:
        return s.replace("%", r"\%")
    for a, b in (("\\", r"\textbackslash{}"), ("%", r"\%"), ("_", r"\_"), ("&", r"\&"), ("#", r"\#"),
                 ("~", r"$\sim$"), ("†", r"$^\dagger$"), ("—", "--")):
        s = s.replace(a, b)
    return s


def render_latex(table: Table, paper: PaperNumbers | None) -> str:
    m = table_matrix(table, paper, latex=True)
    cols = "lll" + "r" * (len(m[0]) - 3)
    esc = [[_latex_escape(x).replace("†", r"$^\dagger$") for x in row] for row in m]
    lines = [f"% {table.title}", f"% {legend(table, paper is not None)}"]
    lines += [f"% {n}" for n in table.notes]
    lines += [rf"\begin{{tabular}}{{{cols}}}", r"\toprule", " & ".join(esc[0]) + r" \\", r"\midrule"]
    lines += [" & ".join(r) + r" \\" for r in esc[1:]]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def render_csv(table: Table, paper: PaperNumbers | None) -> str:
    """The paper's CSV layout (model,method,params,<tasks>,avg) with percentages (metric tables) or
    learning rates (LR tables); ``paper`` adds ``<task>_paper`` and ``<task>_diff`` columns."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    labels = [task_label(t) for t in table.tasks]
    header = ["model", "method", "params"]
    for lab in labels + (["avg"] if table.kind == "metric" else []):
        header += [lab] + ([f"{lab}_paper", f"{lab}_diff"] if paper is not None and table.kind == "metric" else [])
    w.writerow(header)

    def num(x: float | None, scale: float = 100.0) -> str:
        return "" if x is None else f"{round(scale * x, 4):g}"

    for row in table.rows:
        line: list[str] = [model_label(row.model), row.method, row.params]
        prow = paper.lookup(row.model, row.method, row.ratio) if paper is not None else None
        for t in table.tasks:
            if row.predicted is not None:
                line.append(f"{row.predicted[t]:.3g}" if t in row.predicted else "")
                continue
            c = row.cells.get(t)
            if table.kind == "lr":
                line.append(lr_text(c.best_lr) if c else "")
                continue
            ours = c.test_mean if c else None
            line.append(num(ours))
            if paper is not None:
                p = prow.values.get(t) if prow else None
                line += ["" if p is None else f"{p:g}",
                         "" if p is None or ours is None else f"{round(100 * ours - p, 4):g}"]
        if table.kind == "metric":
            avg = row.avg(table.tasks)
            line.append(num(avg))
            if paper is not None:
                p = paper_avg(prow, table.tasks)
                line += ["" if p is None else f"{p:g}",
                         "" if p is None or avg is None else f"{round(100 * avg - p, 4):g}"]
        w.writerow(line)
    return buf.getvalue()


RENDERERS = {"markdown": render_markdown, "latex": render_latex, "csv": render_csv}


def flag_lines(cells: Iterable[Cell]) -> list[str]:
    """One line per flag, in table order: '<model> <task> <method> [<ratio>]: [<kind>] <message>'."""
    cells = list(cells)
    order = task_order(c.task for c in cells)
    out = []
    for c in sorted(cells, key=lambda c: _row_key(c.model, c.method, c.ratio) + (order.index(c.task),)):
        name = f"{model_label(c.model)} {task_label(c.task)} {method_label(c.method)}"
        if c.ratio is not None:
            name += f" {percent_text(c.ratio)}"
        out += [f"{name}: [{f.kind}] {f.message}" for f in c.flags]
    return out


# --------------------------------------------------------------------------------------------------
# Loading and the command line.


def load_records(roots: Sequence[str | Path], source: str | None = None, api: Any = None,
                 history: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """``(source, record)`` pairs from results folders, or from ``wandb:ENTITY/PROJECT``."""
    if source and source != "disk":
        if not source.startswith("wandb:"):
            raise RmpeftError(f"unknown source '{source}'; valid: disk, wandb:ENTITY/PROJECT")
        from rmpeft.loggers import records_from_wandb

        return records_from_wandb(source[len("wandb:"):], api=api, history=history)
    from rmpeft.records import find_records

    missing = [str(r) for r in roots if not Path(r).is_dir()]
    if missing:
        raise RmpeftError(f"results folder not found: {', '.join(missing)}")
    return [(str(p), rec) for p, rec in find_records([Path(r) for r in roots])]


def _split(values: Sequence[str] | None) -> set[str] | None:
    if not values:
        return None
    return {v.strip() for arg in values for v in arg.split(",") if v.strip()}


def select_runs(runs: Iterable[Run], name: Sequence[str] | None = None, model: Sequence[str] | None = None,
                task: Sequence[str] | None = None, method: Sequence[str] | None = None) -> list[Run]:
    """Runs matching every given filter (each a list of values, comma-separated values allowed)."""
    f = {"experiment": _split(name), "model": _split(model), "task": _split(task), "method": _split(method)}
    return [r for r in runs if all(allowed is None or getattr(r, attr) in allowed for attr, allowed in f.items())]


def add_source_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments shared by rmpeft-tables and rmpeft-plot: where the records are and which to use."""
    p.add_argument("roots", nargs="*", default=["results/runs"],
                   help="results folders to read records from (default: results/runs)")
    p.add_argument("--source", default="disk", help="'disk' (default) or wandb:ENTITY/PROJECT")
    p.add_argument("--name", action="append", help="only this experiment (config `name`); repeatable")
    p.add_argument("--model", action="append", help="only this model (e.g. opt-125m); repeatable")
    p.add_argument("--task", action="append", help="only this task (e.g. rte); repeatable")
    p.add_argument("--method", action="append", help="only this method (e.g. masking); repeatable")
    p.add_argument("--diverged", choices=DIVERGED_POLICIES, default="skip-lr",
                   help="skip-lr: an LR at which a seed diverged cannot be best (default); "
                        "drop-seed: average the seeds that finished")


def runs_from_args(args: argparse.Namespace, api: Any = None, history: bool = False) -> tuple[list, list[Run]]:
    """The records and their runs selected by the shared arguments."""
    pairs = load_records(args.roots, args.source, api=api, history=history)
    runs = runs_from_records(pairs)
    selected = select_runs(runs, args.name, args.model, args.task, args.method)
    if not selected:
        where = args.source if args.source not in (None, "disk") else ", ".join(map(str, args.roots))
        raise RmpeftError(f"no run records match in {where}" + (" (after filters)" if runs else ""))
    keep = {id(r) for r in selected}
    return [pair for pair, r in zip(pairs, runs, strict=True) if id(r) in keep], selected


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rmpeft-tables",
        description="Regenerate the paper's tables from run records: best LR on validation, test metric "
                    "mean ± std over seeds, flags for grids that need extending.",
    )
    add_source_arguments(p)
    p.add_argument("--table", action="append", choices=TABLES + ("all",),
                   help="which table (default: all that have rows); repeatable")
    p.add_argument("--format", choices=FORMATS, default="markdown", help="stdout format (default markdown)")
    p.add_argument("--compare-paper", action="store_true",
                   help="put the paper's number and ours − paper beside each cell")
    p.add_argument("--paper-dir", type=Path, default=None, help="folder of the paper's CSVs (default results/paper)")
    p.add_argument("--json", action="store_true",
                   help="print the cells as a JSON list instead of tables (metrics as fractions, like records)")
    p.add_argument("--out", type=Path, default=None,
                   help="also write every table as .md/.tex/.csv plus cells.json and flags.txt into this folder")
    p.add_argument("--predict-ratio", action="append", default=None, metavar="R",
                   help="masking ratio (0.0002 or 0.02%%) for which to predict the best LR; repeatable "
                        "(default: the paper's ratios not yet swept)")
    return p


def cells_json(cells: list[Cell], paper: PaperNumbers | None) -> list[dict[str, Any]]:
    out = []
    for c in cells:
        d = c.to_json()
        if paper is not None:
            prow = paper.lookup(c.model, c.method, c.ratio)
            p = prow.values.get(c.task) if prow else None
            d["paper_test"] = None if p is None else p / 100
            d["diff"] = None if p is None or c.test_mean is None else c.test_mean - p / 100
        out.append(d)
    return out


def run(argv: Sequence[str] | None = None, api: Any = None, stdout: Any = None, stderr: Any = None) -> int:
    """The command; ``api`` replaces ``wandb.Api()`` (tests)."""
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    args = build_parser().parse_args(argv)
    _, runs = runs_from_args(args, api=api)
    cells = aggregate(runs, diverged=args.diverged)
    paper = PaperNumbers.load(args.paper_dir) if args.compare_paper else None
    which = list(TABLES) if not args.table or "all" in args.table else list(dict.fromkeys(args.table))
    ratios = [parse_ratio(r) for r in args.predict_ratio] if args.predict_ratio else None
    tables = build_tables(cells, which, ratios)
    flags = flag_lines(cells)

    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        for t in tables:
            for fmt, render in RENDERERS.items():
                (args.out / f"{t.name}.{FORMAT_SUFFIX[fmt]}").write_text(render(t, paper))
        (args.out / "cells.json").write_text(json.dumps(cells_json(cells, paper), indent=2) + "\n")
        (args.out / "flags.txt").write_text("".join(f + "\n" for f in flags))
        print(f"wrote {len(tables)} table(s) x {len(RENDERERS)} formats, cells.json and flags.txt to {args.out}",
              file=stderr)

    if args.json:
        print(json.dumps(cells_json(cells, paper), indent=2), file=stdout)
        return 0
    render = RENDERERS[args.format]
    print("\n".join(render(t, paper) for t in tables), end="", file=stdout)
    if flags:
        if args.format == "markdown":
            print("\n### Flags\n\n" + "".join(f"- {f}\n" for f in flags), end="", file=stdout)
        else:
            print("".join(f"flag: {f}\n" for f in flags), end="", file=stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(argv)
    except RmpeftError as e:
        print(f"rmpeft-tables: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # stdout closed early (`rmpeft-tables | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
