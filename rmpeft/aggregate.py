"""From run records to table cells: grouping, best-learning-rate selection, flags, and the LR predictor.

Pure functions over record dicts (no I/O): ``rmpeft.tables`` and ``rmpeft.plot`` load records and
render what these functions compute.

One *cell* is a group of runs sharing (model, task, method, ratio). Within a cell:

* the runs of each learning rate are summarised over seeds (finished runs only);
* the best LR is the one with the highest mean **validation** metric (never the test metric); ties
  go to the LR with more finished seeds, then to the smaller LR;
* by default an LR at which any seed diverged cannot be best (``diverged="skip-lr"``): a learning
  rate that blows up on some seeds is unstable, and dropping the blown-up seeds would reward it.
  ``diverged="drop-seed"`` instead averages the seeds that finished;
* the reported numbers are the mean and sample standard deviation of the test metric over the
  finished seeds at the best LR.

Every cell carries flags: best LR at the edge of its grid (extend the grid), missing seeds or learning
rates, diverged / failed / still-running runs, ties.

Metrics keep the records' unit (a fraction in [0, 1]); renderers convert to percentages.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np

from rmpeft.errors import RmpeftError, unknown_choice

DIVERGED_POLICIES = ("skip-lr", "drop-seed")
DONE = ("finished", "diverged")


class GroupKey(NamedTuple):
    """What one table cell aggregates over (its LRs and seeds)."""

    model: str
    task: str
    method: str
    ratio: float | None


@dataclass(frozen=True)
class Run:
    """The facts of one run record that aggregation needs."""

    source: str                 # record path or wandb run path, for messages
    experiment: str             # config `name`
    model: str
    task: str
    method: str
    ratio: float | None
    lr: float
    seed: int
    status: str
    val: float | None
    test: float | None
    metric: str | None = None
    trainable_share: float | None = None
    error: str | None = None
    finished_at: str | None = None

    @property
    def group(self) -> GroupKey:
        return GroupKey(self.model, self.task, self.method, self.ratio)


def _cfg_get(cfg: dict[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _float_or_none(x: Any) -> float | None:
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v


def _first_line(text: Any) -> str | None:
    lines = str(text).strip().splitlines() if text is not None else []
    return lines[0] if lines else None


def run_from_record(record: dict[str, Any], source: str = "") -> Run:
    """Extract a :class:`Run` from a record dict; an error naming ``source`` if a key is missing.

    A ``finished`` record without a validation or test metric is treated as ``failed``: it cannot
    enter a table.
    """
    cfg = record.get("config") or {}
    missing = [k for k in ("model.name", "task.name", "method.name", "optim.lr") if _cfg_get(cfg, k) is None]
    if missing:
        raise RmpeftError(f"run record {source or '?'} lacks config key(s) {', '.join(missing)}")
    status = str(record.get("status"))
    val, test = _float_or_none(record.get("val_metric")), _float_or_none(record.get("test_metric"))
    error = record.get("error")
    if status == "finished" and (val is None or test is None or math.isnan(val) or math.isnan(test)):
        status, error = "failed", "finished record has no val_metric/test_metric"
    ratio = _float_or_none(_cfg_get(cfg, "method.ratio"))
    return Run(
        source=str(source),
        experiment=str(_cfg_get(cfg, "name") or "default"),
        model=str(_cfg_get(cfg, "model.name")),
        task=str(_cfg_get(cfg, "task.name")),
        method=str(_cfg_get(cfg, "method.name")),
        ratio=ratio,
        lr=float(_cfg_get(cfg, "optim.lr")),
        seed=int(_cfg_get(cfg, "seed") or 0),
        status=status,
        val=val,
        test=test,
        metric=record.get("metric"),
        trainable_share=_float_or_none(record.get("trainable_share")),
        error=_first_line(error),
        finished_at=record.get("finished_at"),
    )


def runs_from_records(pairs: Iterable[tuple[Any, dict[str, Any]]]) -> list[Run]:
    """Runs from ``(source, record)`` pairs, as returned by ``rmpeft.records.find_records``."""
    return [run_from_record(rec, str(src)) for src, rec in pairs]


def dedupe(runs: Iterable[Run]) -> list[Run]:
    """One run per (experiment, group, lr, seed): a done run beats a failed or running one, then the
    latest ``finished_at`` wins. Duplicates arise from reruns logged to wandb or overlapping roots."""
    best: dict[tuple, Run] = {}
    for r in runs:
        key = (r.experiment, r.group, r.lr, r.seed)
        rank = (r.status in DONE, r.finished_at or "", r.source)
        old = best.get(key)
        if old is None or rank > (old.status in DONE, old.finished_at or "", old.source):
            best[key] = r
    return list(best.values())


def check_single_experiment(runs: Iterable[Run]) -> None:
    """Refuse to pool a cell's runs across experiments (e.g. 5-epoch and 20-epoch runs)."""
    seen: dict[GroupKey, set[str]] = defaultdict(set)
    for r in runs:
        seen[r.group].add(r.experiment)
    for key, names in seen.items():
        if len(names) > 1:
            raise RmpeftError(
                f"runs of {key.model}/{key.task}/{key.method}"
                f"{'' if key.ratio is None else f' ratio {key.ratio:g}'} come from several experiments "
                f"({', '.join(sorted(names))}); select one with --name"
            )


@dataclass
class Flag:
    kind: str       # edge | missing-seeds | missing-lr | diverged | failed | running | tie | no-best
    message: str


@dataclass
class LRStat:
    """The runs of one learning rate in one cell."""

    lr: float
    finished: list[int] = field(default_factory=list)   # seeds
    diverged: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    running: list[int] = field(default_factory=list)
    val_mean: float | None = None
    val_std: float | None = None
    test_mean: float | None = None
    test_std: float | None = None

    @property
    def done(self) -> bool:
        """Measured: at least one seed finished or diverged (the LR is part of the grid)."""
        return bool(self.finished or self.diverged)


def _mean_std(xs: list[float]) -> tuple[float | None, float | None]:
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def summarize_lr(lr: float, runs: list[Run]) -> LRStat:
    """Mean/std of validation and test metrics over the finished seeds of one LR."""
    s = LRStat(lr=lr)
    for r in sorted(runs, key=lambda r: r.seed):
        {"finished": s.finished, "diverged": s.diverged, "failed": s.failed, "running": s.running}[
            r.status
        ].append(r.seed)
    fin = sorted((r for r in runs if r.status == "finished"), key=lambda r: r.seed)
    s.val_mean, s.val_std = _mean_std([r.val for r in fin])  # type: ignore[misc]
    s.test_mean, s.test_std = _mean_std([r.test for r in fin])  # type: ignore[misc]
    return s


@dataclass
class Cell:
    """One (model, task, method, ratio) entry of a table."""

    experiment: str
    model: str
    task: str
    method: str
    ratio: float | None
    best_lr: float | None
    val_mean: float | None
    test_mean: float | None
    test_std: float | None
    n_seeds: int
    edge_of_grid: bool
    edge: str | None                      # "low" | "high" | "only" (a one-LR grid) | None
    grid: list[float]                     # LRs measured (finished or diverged)
    lrs: list[LRStat]
    metric: str | None = None
    trainable_share: float | None = None
    flags: list[Flag] = field(default_factory=list)

    @property
    def key(self) -> GroupKey:
        return GroupKey(self.model, self.task, self.method, self.ratio)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "task": self.task,
            "method": self.method,
            "ratio": self.ratio,
            "best_lr": self.best_lr,
            "val_mean": self.val_mean,
            "test_mean": self.test_mean,
            "test_std": self.test_std,
            "n_seeds": self.n_seeds,
            "edge_of_grid": self.edge_of_grid,
            "edge": self.edge,
            "experiment": self.experiment,
            "metric": self.metric,
            "trainable_share": self.trainable_share,
            "grid": self.grid,
            "lrs": [asdict(s) for s in self.lrs],
            "flags": [asdict(f) for f in self.flags],
        }


def _lr_text(lr: float) -> str:
    return f"{lr:g}"


def _select_best(stats: list[LRStat], diverged: str) -> tuple[LRStat | None, list[LRStat]]:
    """The best LR by mean validation metric and the LRs tied with it."""
    eligible = [s for s in stats if s.val_mean is not None and (diverged == "drop-seed" or not s.diverged)]
    if not eligible:
        return None, []
    top = max(s.val_mean for s in eligible)  # type: ignore[type-var]
    tied = [s for s in eligible if math.isclose(s.val_mean, top, rel_tol=1e-9, abs_tol=1e-12)]  # type: ignore[arg-type]
    tied.sort(key=lambda s: (-len(s.finished), s.lr))
    return tied[0], tied


def _cell_flags(
    cell: Cell, tied: list[LRStat], expected_seeds: set[int], expected_lrs: set[float], diverged: str
) -> list[Flag]:
    flags: list[Flag] = []
    grid_text = "[" + ", ".join(_lr_text(x) for x in cell.grid) + "]"
    if cell.best_lr is None:
        flags.append(Flag("no-best", "no learning rate has a finished run" + (
            "" if diverged == "drop-seed" else " without diverged seeds")))
    elif cell.edge == "only":
        flags.append(Flag("edge", f"best lr {_lr_text(cell.best_lr)} is the only LR measured: sweep around it"))
    elif cell.edge == "high":
        flags.append(Flag("edge", f"best lr {_lr_text(cell.best_lr)} is the largest of the grid {grid_text}: "
                                  "extend the grid upward"))
    elif cell.edge == "low":
        flags.append(Flag("edge", f"best lr {_lr_text(cell.best_lr)} is the smallest of the grid {grid_text}: "
                                  "extend the grid downward"))
    if len(tied) > 1:
        flags.append(Flag("tie", "validation tie between lr " + ", ".join(_lr_text(s.lr) for s in tied)
                          + f"; chose {_lr_text(tied[0].lr)} (more seeds, then smaller LR)"))
    for s in cell.lrs:
        have = set(s.finished) | set(s.diverged)
        lacking = sorted(expected_seeds - have)
        if lacking and s.done:
            flags.append(Flag("missing-seeds", f"lr {_lr_text(s.lr)}: {len(have)} of {len(expected_seeds)} seeds "
                                               f"(missing seed {', '.join(map(str, lacking))})"))
        if s.diverged:
            what = "excluded from best-LR choice" if diverged == "skip-lr" else "seeds dropped from the mean"
            flags.append(Flag("diverged", f"lr {_lr_text(s.lr)}: seed {', '.join(map(str, s.diverged))} "
                                          f"diverged ({what})"))
        if s.failed:
            flags.append(Flag("failed", f"lr {_lr_text(s.lr)}: seed {', '.join(map(str, s.failed))} failed"))
        if s.running:
            flags.append(Flag("running", f"lr {_lr_text(s.lr)}: seed {', '.join(map(str, s.running))} still running"))
    absent = sorted(expected_lrs - set(cell.grid))
    if absent:
        flags.append(Flag("missing-lr", "no finished run at lr " + ", ".join(_lr_text(x) for x in absent)
                          + " (swept for this model/method on other tasks or seeds)"))
    return flags


def aggregate(runs: Iterable[Run], diverged: str = "skip-lr") -> list[Cell]:
    """All cells of ``runs``, sorted by (model, task, method, ratio descending).

    Expected seeds are every seed seen in the run's experiment; the expected LR grid of a cell is
    every LR seen for its (experiment, model, method, ratio) on any task.
    """
    if diverged not in DIVERGED_POLICIES:
        raise unknown_choice("diverged policy", diverged, DIVERGED_POLICIES)
    runs = dedupe(runs)
    check_single_experiment(runs)
    seeds_of: dict[str, set[int]] = defaultdict(set)
    lrs_of: dict[tuple, set[float]] = defaultdict(set)
    groups: dict[GroupKey, list[Run]] = defaultdict(list)
    for r in runs:
        seeds_of[r.experiment].add(r.seed)
        lrs_of[(r.experiment, r.model, r.method, r.ratio)].add(r.lr)
        groups[r.group].append(r)

    cells = []
    for key, members in groups.items():
        by_lr: dict[float, list[Run]] = defaultdict(list)
        for r in members:
            by_lr[r.lr].append(r)
        stats = [summarize_lr(lr, by_lr[lr]) for lr in sorted(by_lr)]
        grid = [s.lr for s in stats if s.done]
        best, tied = _select_best(stats, diverged)
        edge = None
        if best is not None and grid:
            if len(grid) == 1:
                edge = "only"
            elif best.lr == grid[-1]:
                edge = "high"
            elif best.lr == grid[0]:
                edge = "low"
        shares = [r.trainable_share for r in members if r.trainable_share is not None]
        experiment = members[0].experiment
        cell = Cell(
            experiment=experiment,
            model=key.model,
            task=key.task,
            method=key.method,
            ratio=key.ratio,
            best_lr=None if best is None else best.lr,
            val_mean=None if best is None else best.val_mean,
            test_mean=None if best is None else best.test_mean,
            test_std=None if best is None else best.test_std,
            n_seeds=0 if best is None else len(best.finished),
            edge_of_grid=edge is not None,
            edge=edge,
            grid=grid,
            lrs=stats,
            metric=next((r.metric for r in members if r.metric), None),
            trainable_share=statistics.fmean(shares) if shares else None,
        )
        cell.flags = _cell_flags(
            cell, tied, seeds_of[experiment], lrs_of[(experiment, key.model, key.method, key.ratio)], diverged
        )
        cells.append(cell)
    cells.sort(key=lambda c: (c.model, c.task, c.method, -(c.ratio if c.ratio is not None else math.inf)))
    return cells


# --------------------------------------------------------------------------------------------------
# The predictor: how the best LR scales with the masking ratio.


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
            return f"{self.model} {self.method}: no fit ({self.reason})"
        r2 = "n/a" if self.r2 is None else f"{self.r2:.2f}"
        return (
            f"{self.model} {self.method}: best lr ~ ratio^{self.slope:.2f} "
            f"({self.n_points} points over {self.n_ratios} ratios and {len(self.intercepts)} tasks, "
            f"{self.n_edge} at a grid edge, R^2 {r2})"
        )


def fit_lr_scaling(cells: Iterable[Cell]) -> list[LRFit]:
    """One :class:`LRFit` per (model, method) among cells that have a ratio and a best LR."""
    pts: dict[tuple[str, str], list[Cell]] = defaultdict(list)
    for c in cells:
        if c.ratio is not None and c.ratio > 0 and c.best_lr is not None and c.best_lr > 0:
            pts[(c.model, c.method)].append(c)
    fits = []
    for (model, method), cs in sorted(pts.items()):
        tasks = sorted({c.task for c in cs})
        ratios = {c.ratio for c in cs}
        n_edge = sum(c.edge_of_grid for c in cs)
        per_task_ratios = {t: {c.ratio for c in cs if c.task == t} for t in tasks}
        if not any(len(v) > 1 for v in per_task_ratios.values()):
            fits.append(LRFit(model, method, None, {}, len(cs), len(ratios), n_edge, None,
                              reason="needs best LRs at 2 or more ratios of one task"))
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
        fits.append(LRFit(
            model, method, float(coef[-1]), {t: float(coef[i]) for i, t in enumerate(tasks)},
            len(cs), len(ratios), n_edge, r2,
        ))
    return fits
