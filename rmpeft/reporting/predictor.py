"""The best-LR predictor: how the best learning rate scales with the masking ratio (a power law fitted
to the best LRs of the cells, per model, method and setting)."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from rmpeft.reporting.aggregate import Cell


@dataclass
class LRFit:
    """A power law ``best_lr = 10**a_task * ratio**slope`` for one (model, method), fitted by least
    squares on log10 scale with one intercept per task and a slope shared by all tasks (tasks differ in
    their LR level, not, to first order, in how it moves with the ratio)."""

    model: str
    method: str
    slope: float | None                     # None when the points do not determine it
    intercepts: dict[str, float]            # task -> a_task (log10)
    n_points: int
    n_ratios: int
    n_edge: int                             # points whose best LR lies at the edge of its grid
    r2: float | None
    reason: str | None = None               # why there is no fit
    variant: str | None = None              # the setting label of the fitted cells (Cell.variant)
    task_slopes: dict[str, float] = field(default_factory=dict)   # task -> its own slope (2+ ratios)

    @property
    def name(self) -> str:
        return f"{self.model} {self.method}" + (f" ({self.variant})" if self.variant else "")

    def predict(self, ratio: float, task: str | None = None) -> float | None:
        """Predicted best LR at ``ratio`` for ``task`` (all tasks' mean intercept when task is None
        or was not in the fit)."""
        if self.slope is None or ratio <= 0:
            return None
        a = self.intercepts.get(task) if task is not None else None
        if a is None:
            a = statistics.fmean(self.intercepts.values())
        return float(10 ** (a + self.slope * math.log10(ratio)))

    def describe(self) -> str:
        if self.slope is None:
            return f"{self.name}: no fit ({self.reason})"
        r2 = "n/a" if self.r2 is None else f"{self.r2:.2f}"
        per_task = ""
        if len(self.intercepts) > 1 and self.task_slopes:
            per_task = "; per task: " + ", ".join(f"{t} {s:.2f}" for t, s in sorted(self.task_slopes.items()))
        return (
            f"{self.name}: best lr ~ ratio^{self.slope:.2f} "
            f"({self.n_points} points over {self.n_ratios} ratios and {len(self.intercepts)} tasks, "
            f"{self.n_edge} at a grid edge, R^2 {r2}{per_task})"
        )


def _slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys on xs; None when the xs do not vary."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return None if sxx == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


def fit_lr_scaling(cells: Iterable[Cell]) -> list[LRFit]:
    """One :class:`LRFit` per (model, method, variant) among cells that have a ratio and a best LR."""
    pts: dict[tuple[str, str, str], list[Cell]] = defaultdict(list)
    for c in cells:
        if c.ratio is not None and c.ratio > 0 and c.best_lr is not None and c.best_lr > 0:
            pts[(c.model, c.method, c.variant or "")].append(c)
    fits = []
    for (model, method, variant), cs in sorted(pts.items()):
        tasks = sorted({c.task for c in cs})
        ratios = {c.ratio for c in cs}
        n_edge = sum(c.edge_of_grid for c in cs)
        per_task_ratios = {t: {c.ratio for c in cs if c.task == t} for t in tasks}
        if not any(len(v) > 1 for v in per_task_ratios.values()):
            fits.append(LRFit(model, method, None, {}, len(cs), len(ratios), n_edge, None,
                              reason="needs best LRs at 2 or more ratios of one task", variant=variant or None))
            continue
        x = np.zeros((len(cs), len(tasks) + 1))
        y = np.array([math.log10(c.best_lr) for c in cs])  # type: ignore[arg-type]
        for i, c in enumerate(cs):
            x[i, tasks.index(c.task)] = 1.0
            x[i, -1] = math.log10(c.ratio)  # type: ignore[arg-type]
        coef, *_ = np.linalg.lstsq(x, y, rcond=None)
        resid = y - x @ coef
        ss_tot = float(((y - y.mean()) ** 2).sum())
        r2 = None if ss_tot == 0 else 1.0 - float((resid**2).sum()) / ss_tot
        task_slopes = {}
        for t in tasks:
            own = [c for c in cs if c.task == t]
            slope = _slope([math.log10(c.ratio) for c in own], [math.log10(c.best_lr) for c in own])  # type: ignore[arg-type]
            if slope is not None:
                task_slopes[t] = slope
        fits.append(LRFit(
            model, method, float(coef[-1]), {t: float(coef[i]) for i, t in enumerate(tasks)},
            len(cs), len(ratios), n_edge, r2, variant=variant or None, task_slopes=task_slopes,
        ))
    return fits
