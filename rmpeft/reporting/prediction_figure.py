"""The LR-prediction figure: per cell, the learning rate predicted before training against the grid's best
validation LR (log-log), with the diagonal and the half-decade band a prediction must fall in to count
as a hit; colour: method and ratio, marker: task."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rmpeft.reporting.lr_curves import FIG_FORMATS, save_figure
from rmpeft.reporting.lr_prediction import HALF_DECADE, PredictionRow

MARKERS = "osD^vP*Xh"


def plot_lr_prediction(rows: Sequence[PredictionRow], out_dir: Path, formats: Sequence[str] = FIG_FORMATS) -> list[Path]:
    """``lr_prediction.<fmt>`` in ``out_dir`` (nothing when there are no rows)."""
    if not rows:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r.method for r in rows))
    tasks = list(dict.fromkeys(r.task for r in rows))
    colours = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    fig, ax = plt.subplots(figsize=(5.4, 4.4))
    lo = min(min(r.best_lr, r.predicted) for r in rows) / 3
    hi = max(max(r.best_lr, r.predicted) for r in rows) * 3
    band = 10 ** HALF_DECADE
    ax.plot([lo, hi], [lo, hi], color="0.3", linewidth=1)
    ax.fill_between([lo, hi], [lo / band, hi / band], [lo * band, hi * band], color="0.85", label="within half a decade")
    for r in rows:
        ax.plot([r.best_lr], [r.predicted], linestyle="none", marker=MARKERS[tasks.index(r.task) % len(MARKERS)],
                color=colours[r.method], ms=7, markeredgecolor="black" if r.hit else colours[r.method])
    for m in methods:
        ax.plot([], [], linestyle="none", marker="o", color=colours[m], label=m)
    for i, t in enumerate(tasks):
        ax.plot([], [], linestyle="none", marker=MARKERS[i % len(MARKERS)], color="0.4", label=t)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("best validation LR of the grid")
    ax.set_ylabel("predicted LR")
    hits = sum(r.hit for r in rows)
    sources = ", ".join(dict.fromkeys(r.source for r in rows))
    ax.set_title(f"{hits}/{len(rows)} cells within half a decade ({sources})", fontsize=8)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    written = save_figure(fig, out_dir, "lr_prediction", formats)
    plt.close(fig)
    return written
