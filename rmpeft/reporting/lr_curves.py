"""Figure 3: metric versus learning rate, one line per method, ratio and setting, per model and task;
zero-shot cells (nothing trained) as a horizontal reference line."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from rmpeft.reporting.aggregate import Cell
from rmpeft.reporting.paper import method_label, model_label, percent_text, task_label

FIG_FORMATS = ("png", "pdf")


def save_figure(fig, out_dir: Path, stem: str, formats: Sequence[str] = FIG_FORMATS) -> list[Path]:
    """Write ``fig`` as ``<out_dir>/<stem>.<fmt>`` for every format; the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out_dir / f"{stem}.{fmt}"
        fig.savefig(path)
        paths.append(path)
    return paths


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _line_label(cell: Cell) -> str:
    label = method_label(cell.method)
    label = f"{label} {percent_text(cell.ratio)}" if cell.ratio is not None else label
    return label + (f" ({cell.variant})" if cell.variant else "")


def plot_lr_curves(cells: Sequence[Cell], out_dir: Path, metric: str = "test",
                   formats: Sequence[str] = FIG_FORMATS) -> list[Path]:
    """Figure 3: one panel per (model, task); metric (mean over finished seeds, band = ± std) versus
    learning rate on a log axis, one line per method/ratio; ★ marks the best-validation LR, × an LR at
    which some seed diverged; a zero-shot cell is a dashed horizontal line. Returns the files written."""
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
        for c in sorted(group, key=lambda c: (c.method != "ft", c.method, -(c.ratio or math.inf), c.variant or "")):
            if c.zero_shot:
                level = getattr(c, f"{metric}_mean")
                if level is not None:
                    ax.axhline(100 * level, color="0.35", linestyle="--", linewidth=1.2, label=_line_label(c))
                    drew = True
                continue
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
        written += save_figure(fig, out_dir, f"lr_curves_{_safe(model)}_{_safe(task)}", formats)
        plt.close(fig)
    return written
