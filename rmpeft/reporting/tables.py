"""The paper's tables as rows of cells (rendered by :mod:`rmpeft.reporting.render`).

Tables (rows x the tasks as columns):
  main          Table 1/5: test metric at the best validation LR, mean ± std over seeds, with Avg
  structured    Table 8: the same for Structured Masking
  lr-masking    Tables 6/9: the best LR of each masking ratio, plus the LR predicted by the fitted
                power law for ratios not swept
  lr-baselines  Table 7: the best LR of full fine-tuning and the PEFT baselines
  vision        Table 2: test accuracy of the image tasks (CLIP ViT-B/16), like main

A row is one (model, method, ratio, setting variant): runs of one method with different settings
(LoRA ``r=8`` and ``r=16``) are separate rows labelled ``LoRA (r=16)``; runs of a protocol other than
``clean`` are rows of their own, labelled ``LoRA (protocol=paper)``; runs that train nothing
(``method=none``) are a "Zero-shot" row of the metric tables (no LR selected); every title names the
protocols of its rows and the metric the learning rate was selected on (``[LR selected on TEST]`` when
``rmpeft-tables --select test``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rmpeft.data.tasks import IMAGE_TASKS
from rmpeft.errors import unknown_choice
from rmpeft.reporting.aggregate import Cell
from rmpeft.reporting.paper import (
    MASKING_METHODS,
    PAPER_RATIOS,
    PaperNumbers,
    method_label,
    model_label,
    percent_text,
    row_key,
    share_text,
    task_label,
    task_order,
)
from rmpeft.reporting.predictor import fit_lr_scaling

TABLES = ("main", "structured", "lr-masking", "lr-baselines", "vision")


def row_label(method: str, variant: str | None) -> str:
    """'LoRA', or 'LoRA (r=16)' for one of several settings of a method."""
    return method_label(method) + (f" ({variant})" if variant else "")



@dataclass
class TableRow:
    model: str
    method: str
    ratio: float | None
    cells: dict[str, Cell]                      # task -> cell
    predicted: dict[str, float] | None = None   # task -> predicted LR (predictor rows only)
    variant: str | None = None                  # setting label when the method has several settings

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
    rows: list[TableRow]
    notes: list[str] = field(default_factory=list)


def _rows(cells: Iterable[Cell]) -> list[TableRow]:
    rows: dict[tuple, TableRow] = {}
    for c in cells:
        key = (c.model, c.method, c.ratio, c.variant)
        rows.setdefault(key, TableRow(c.model, c.method, c.ratio, {}, variant=c.variant)).cells[c.task] = c
    return [rows[k] for k in sorted(rows, key=lambda k: row_key(*k[:3]) + (k[3] or "",))]


def caption(cells: Iterable[Cell]) -> str:
    """What a title says about its cells: their protocols (unless all are ``clean``), and a
    test-selection warning."""
    cells = list(cells)
    protocols = sorted({c.protocol for c in cells})
    text = "" if protocols == ["clean"] else f" — protocol: {', '.join(protocols)}"
    if any(c.selected_on == "test" for c in cells):
        text += " [LR selected on TEST, not validation]"
    return text


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
            sel = [c for c in cells if c.method != "structured_masking" and c.task not in IMAGE_TASKS]
            title, kind = "Table 1/5: test metric (%) at the best {on} LR, mean ± std over seeds", "metric"
        elif name == "vision":
            sel = [c for c in cells if c.task in IMAGE_TASKS]
            title, kind = "Table 2: image classification, test accuracy (%) at the best {on} LR", "metric"
        elif name == "structured":
            sel = [c for c in cells if c.method == "structured_masking"]
            title, kind = "Table 8: Structured Masking, test metric (%) at the best {on} LR", "metric"
        elif name == "lr-masking":
            sel = [c for c in cells if c.method in MASKING_METHODS]
            title, kind = "Tables 6/9: best learning rate, masking", "lr"
        else:
            sel = [c for c in cells if c.method not in MASKING_METHODS and not c.zero_shot]
            title, kind = "Table 7: best learning rate, baselines", "lr"
        if not sel:
            continue
        title = title.format(on="validation" if all(c.selected_on == "val" for c in sel) else "TEST") + caption(sel)
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
        swept = {c.ratio for c in cells if (c.model, c.method, c.variant) == (fit.model, fit.method, fit.variant)}
        ratios = predict_ratios if predict_ratios else [
            r for r in PAPER_RATIOS if not any(math.isclose(r, s, rel_tol=1e-6) for s in swept if s is not None)]
        for ratio in ratios:
            pred = {t: fit.predict(ratio, t) for t in table.tasks if t in fit.intercepts}
            row = TableRow(fit.model, fit.method, ratio, {}, {t: v for t, v in pred.items() if v is not None}, fit.variant)
            table.rows.append(row)
            pooled = fit.predict(ratio)
            table.notes.append(f"Predicted best lr for {model_label(fit.model)} {row_label(fit.method, fit.variant)} at "
                               f"{percent_text(ratio)}: {pooled:.2g} (tasks' mean); centre the grid there")
    table.rows.sort(key=lambda r: row_key(r.model, r.method, r.ratio) + (r.variant or "", r.predicted is not None))


def flag_lines(cells: Iterable[Cell]) -> list[str]:
    """One line per flag, in table order: '<model> <task> <method> [(<variant>)] [<ratio>]: [<kind>] <message>'."""
    cells = list(cells)
    order = task_order(c.task for c in cells)
    out = []
    for c in sorted(cells, key=lambda c: row_key(c.model, c.method, c.ratio) + (c.variant or "", order.index(c.task))):
        name = f"{model_label(c.model)} {task_label(c.task)} {row_label(c.method, c.variant)}"
        if c.ratio is not None:
            name += f" {percent_text(c.ratio)}"
        if c.selected_on == "test":
            name += " [LR selected on test]"
        out += [f"{name}: [{f.kind}] {f.message}" for f in c.flags]
    return out


def cells_json(cells: list[Cell], paper: PaperNumbers | None) -> list[dict[str, Any]]:
    """The cells as JSON objects (metrics as fractions), with the paper's number when given."""
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
