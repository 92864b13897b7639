"""Figures over the trainable share, drawn from table cells (:mod:`rmpeft.reporting.aggregate`):

- Figure 1: the average score over tasks against the trainable share (log axis), Random Masking as a
  line over its ratios, the other methods as single points, zero-shot as a horizontal line;
- Figure 5: Structured against Random Masking across shares, one panel per task.

A point is a cell's test metric at its selected learning rate (mean over seeds). An average over tasks
is drawn only for shares measured on every task of the model, so no point averages fewer tasks than
another (the tasks averaged are named in the title).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from rmpeft.reporting.aggregate import Cell
from rmpeft.reporting.lr_curves import FIG_FORMATS, _safe, save_figure
from rmpeft.reporting.paper import method_label, model_label, task_label, task_order

LINE_METHODS = ("masking", "structured_masking")   # drawn as lines over their ratios


def _share(cell: Cell) -> float | None:
    """The cell's trainable share in % (from the records; the configured ratio when absent)."""
    share = cell.trainable_share if cell.trainable_share is not None else cell.ratio
    return None if share is None else 100 * share


def _label(method: str, variant: str | None) -> str:
    return method_label(method) + (f" ({variant})" if variant else "")


Key = tuple[str, float | None, str | None]   # (method, ratio, setting variant)


def share_curve_points(cells: Sequence[Cell]) -> dict[str, dict[Key, tuple[float, float]]]:
    """Per model: (method, ratio, variant) -> (mean share %, average test metric over the model's tasks),
    for the keys measured on every task of the model; zero-shot has share 0. A setting variant (e.g.
    ``protocol=paper``, ``r=16``) is a series of its own, as it is a row of its own in the tables."""
    out: dict[str, dict[Key, tuple[float, float]]] = {}
    by_model: dict[str, list[Cell]] = defaultdict(list)
    for c in cells:
        if c.test_mean is not None:
            by_model[c.model].append(c)
    for model, group in by_model.items():
        tasks = {c.task for c in group}
        pairs: dict[Key, list[Cell]] = defaultdict(list)
        for c in group:
            pairs[(c.method, c.ratio, c.variant)].append(c)
        points = {}
        for key, members in pairs.items():
            if {c.task for c in members} != tasks or len(members) != len(tasks):
                continue
            shares = [0.0 if c.zero_shot else (_share(c) or 0.0) for c in members]
            points[key] = (statistics.fmean(shares), statistics.fmean(100 * c.test_mean for c in members))
        out[model] = points
    return out


def plot_share_curve(cells: Sequence[Cell], out_dir: Path, formats: Sequence[str] = FIG_FORMATS) -> list[Path]:
    """Figure 1: average test score over tasks against trainable share, one figure per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    tasks_of: dict[str, list[str]] = defaultdict(list)
    for c in cells:
        if c.task not in tasks_of[c.model]:
            tasks_of[c.model].append(c.task)
    for model, points in sorted(share_curve_points(cells).items()):
        if not points:
            continue
        fig, ax = plt.subplots(figsize=(5.2, 3.6))
        variants = sorted({v or "" for _, _, v in points})
        for method in LINE_METHODS:
            for variant in variants:
                line = sorted((share, score) for (m, _, v), (share, score) in points.items()
                              if m == method and (v or "") == variant and share > 0)
                if line:
                    ax.plot([s for s, _ in line], [y for _, y in line], marker="o", label=_label(method, variant))
        for (method, _, variant), (share, score) in sorted(points.items(), key=lambda kv: (kv[0][0], kv[0][2] or "")):
            if method in LINE_METHODS:
                continue
            if share == 0:
                ax.axhline(score, color="0.35", linestyle="--", linewidth=1.2, label=_label(method, variant))
            else:
                ax.plot([share], [score], marker="s", linestyle="none", ms=7, label=_label(method, variant))
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (% of the model)")
        ax.set_ylabel("average test score (%)")
        names = ", ".join(task_label(t) for t in tasks_of[model])
        ax.set_title(f"{model_label(model)}: average over {names}", fontsize=9)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        written += save_figure(fig, out_dir, f"share_curve_{_safe(model)}", formats)
        plt.close(fig)
    return written


def comparison_tasks(cells: Sequence[Cell]) -> list[str]:
    """The tasks (in the paper's order) on which both Random and Structured Masking have a cell."""
    order = task_order(c.task for c in cells)
    return [t for t in order if {c.method for c in cells if c.task == t} >= set(LINE_METHODS)]


def plot_structured_vs_random(cells: Sequence[Cell], out_dir: Path,
                              formats: Sequence[str] = FIG_FORMATS) -> list[Path]:
    """Figure 5: test score of Structured and Random Masking against the share, one panel per task that
    has both, one figure per model (mean ± std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    by_model: dict[str, list[Cell]] = defaultdict(list)
    for c in cells:
        if c.method in LINE_METHODS and c.test_mean is not None:
            by_model[c.model].append(c)
    for model, group in sorted(by_model.items()):
        tasks = comparison_tasks(group)
        if not tasks:
            continue   # nothing to compare
        fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.2), squeeze=False)
        for ax, task in zip(axes[0], tasks):
            for method in LINE_METHODS:
                for variant in sorted({c.variant or "" for c in group}):
                    pts = sorted((_share(c) or math.nan, 100 * c.test_mean, 100 * (c.test_std or 0.0))
                                 for c in group if c.task == task and c.method == method and (c.variant or "") == variant)
                    if pts:
                        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o",
                                    capsize=3, label=_label(method, variant))
            ax.set_xscale("log")
            ax.set_title(task_label(task), fontsize=9)
            ax.set_xlabel("trainable share (%)")
            ax.grid(True, which="major", alpha=0.3)
        axes[0][0].set_ylabel("test score (%)")
        fullest = max(axes[0], key=lambda ax: len(ax.get_legend_handles_labels()[1]))
        fullest.legend(fontsize=7, loc="best")
        fig.suptitle(model_label(model), fontsize=10)
        fig.tight_layout()
        written += save_figure(fig, out_dir, f"structured_vs_random_{_safe(model)}", formats)
        plt.close(fig)
    return written
