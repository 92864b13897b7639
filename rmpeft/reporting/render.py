"""Renderers of :class:`~rmpeft.reporting.tables.Table`: Markdown, LaTeX and the paper's CSV layout,
optionally beside the paper's numbers (``paper``)."""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Sequence

from rmpeft.data.tasks import TASK_ORDER
from rmpeft.reporting.aggregate import Cell
from rmpeft.reporting.paper import PaperNumbers, PaperRow, lr_text, model_label, task_label
from rmpeft.reporting.tables import Table, row_label

FORMATS = ("markdown", "latex", "csv")
FORMAT_SUFFIX = {"markdown": "md", "latex": "tex", "csv": "csv"}

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
    if set(tasks) == set(TASK_ORDER) and prow.avg is not None:
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
        line = [model_label(row.model), row_label(row.method, row.variant), row.params]
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
    on = "TEST" if any(c.selected_on == "test" for r in table.rows for c in r.cells.values()) else "validation"
    if table.kind == "metric":
        parts.append(f"cells: test metric in % at the LR with the best mean {on} metric, mean ± std over seeds")
        if compare:
            parts.append("(paper's number, ours − paper)")
        if any(c.zero_shot for r in table.rows for c in r.cells.values()):
            parts.append("Zero-shot: the model untrained (no LR)")
    else:
        parts.append(f"cells: learning rate with the best mean {on} metric")
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
        method = row.method + (f" ({row.variant})" if row.variant else "")
        line: list[str] = [model_label(row.model), method, row.params]
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
