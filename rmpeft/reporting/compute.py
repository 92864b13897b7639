"""The compute table: what a set of runs cost, in hours of wall time per method and task, from the
``wall_s`` of their records (finished and diverged runs; a run still going or failed is not counted)."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from rmpeft.records import DONE_STATUSES
from rmpeft.reporting.paper import (
    method_label,
    model_label,
    percent_text,
    row_key,
    task_label,
    task_order,
)
from rmpeft.reporting.runs import RunResult

COMPUTE_TABLE = "compute"


@dataclass
class ComputeRow:
    model: str
    method: str
    ratio: float | None
    hours: dict[str, float]     # task -> hours of wall time
    runs: dict[str, int]        # task -> runs counted

    @property
    def label(self) -> str:
        return method_label(self.method) + ("" if self.ratio is None else f" {percent_text(self.ratio)}")


def compute_rows(runs: Iterable[RunResult]) -> tuple[list[ComputeRow], list[str]]:
    """One row per (model, method, ratio) with the wall hours of its done runs per task, and the tasks."""
    rows: dict[tuple, ComputeRow] = {}
    tasks = set()
    for r in runs:
        if r.status not in DONE_STATUSES or r.wall_s is None:
            continue
        row = rows.setdefault((r.model, r.method, r.ratio), ComputeRow(r.model, r.method, r.ratio, defaultdict(float),
                                                                        defaultdict(int)))
        row.hours[r.task] += r.wall_s / 3600
        row.runs[r.task] += 1
        tasks.add(r.task)
    return [rows[k] for k in sorted(rows, key=lambda k: row_key(*k))], task_order(tasks)


def render_compute_table(runs: Iterable[RunResult], fmt: str = "markdown") -> str:
    """The compute table in ``markdown``, ``csv`` or ``latex`` ('' when no run has a wall time)."""
    rows, tasks = compute_rows(runs)
    if not rows:
        return ""
    header = ["Model", "Method"] + [task_label(t) for t in tasks] + ["Total"]
    body = []
    for row in rows:
        cells = [f"{row.hours[t]:.2f} ({row.runs[t]})" if t in row.runs else "" for t in tasks]
        body.append([model_label(row.model), row.label] + cells
                    + [f"{sum(row.hours.values()):.2f} ({sum(row.runs.values())})"])
    per_task = [sum(r.hours.get(t, 0.0) for r in rows) for t in tasks]
    n_task = [sum(r.runs.get(t, 0) for r in rows) for t in tasks]
    total = [f"{h:.2f} ({n})" for h, n in zip(per_task, n_task, strict=True)]
    body.append(["", "Total"] + total + [f"{sum(per_task):.2f} ({sum(n_task)})"])
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf).writerows([header] + body)
        return buf.getvalue()
    if fmt == "latex":
        lines = [r"\begin{tabular}{ll" + "r" * (len(header) - 2) + "}", r"\toprule", " & ".join(header) + r" \\",
                 r"\midrule"] + [" & ".join(c.replace("%", r"\%") for c in row) + r" \\" for row in body]
        return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"]) + "\n"
    lines = ["### Compute: hours of wall time (runs) per method and task", "",
             "| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    note = ("cells: the summed `wall_s` of the finished and diverged runs' records, in hours, and how many runs; "
            "wall time on the machine and threads each run had.")
    return "\n".join(lines + ["", note]) + "\n"
