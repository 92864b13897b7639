"""From runs to table cells: grouping, best-learning-rate selection and flags.

Pure functions (no I/O): :mod:`rmpeft.reporting.tables` and the figures render what they compute.

One *cell* is a group of runs sharing (model, task, method, ratio, setting hash); see
:mod:`rmpeft.reporting.runs`. Runs of one model and method whose settings differ (LoRA ``r=8`` and
``r=16``) are separate cells, each labelled by the differing fields (``Cell.variant``) and flagged
``mixed``. Within a cell:

* the runs of each learning rate are summarised over seeds (finished runs only);
* the best LR is the one with the highest mean **validation** metric (``select="val"``, the default);
  ``select="test"`` picks the highest mean **test** metric instead, the paper's apparent practice
  (its released code writes test metrics only), an optimistic choice that every output labels as
  such; ties go to the LR with more finished seeds, then to the smaller LR;
* by default an LR at which any seed diverged cannot be best (``diverged="skip-lr"``): a learning
  rate that blows up on some seeds is unstable, and dropping the blown-up seeds would reward it.
  ``diverged="drop-seed"`` instead averages the seeds that finished;
* the reported numbers are the mean and sample standard deviation of the test metric over the
  finished seeds at the best LR.

Every cell carries flags: best LR at the edge of its grid (extend the grid), missing seeds or learning
rates, diverged / failed / still-running runs, ties, several settings of one method (``mixed``), runs
from several rmpeft commits (``commits``: the run identity covers the config, not the code).

A *zero-shot* cell (runs that train nothing, e.g. ``method=none``) selects no learning rate: its
``best_lr`` is None and it reports the runs of the LR with the most finished seeds (the LR a run was
filed under does not change its result), without grid flags.

Metrics keep the records' unit (a fraction in [0, 1]); renderers convert to percentages.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from rmpeft.errors import unknown_choice
from rmpeft.records import DONE_STATUSES
from rmpeft.reporting.runs import (
    GroupKey,
    RunResult,
    check_single_experiment,
    dedupe,
    setting_variants,
)

DIVERGED_POLICIES = ("skip-lr", "drop-seed")
SELECTIONS = ("val", "test")      # which mean metric picks a cell's learning rate


@dataclass
class Flag:
    kind: str       # edge | missing-seeds | missing-lr | narrower-grid | diverged | failed | running | tie | no-best
                    # | mixed | commits
    message: str
    lrs: list[float] = field(default_factory=list)   # the learning rates it is about (missing-lr, narrower-grid: absent)


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


def mean_std(xs: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of ``xs``; None where undefined (no value; one value: no std)."""
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def summarize_lr(lr: float, runs: list[RunResult]) -> LRStat:
    """Mean/std of validation and test metrics over the finished seeds of one LR."""
    s = LRStat(lr=lr)
    for r in sorted(runs, key=lambda r: r.seed):
        {"finished": s.finished, "diverged": s.diverged, "failed": s.failed, "running": s.running}[
            r.status
        ].append(r.seed)
    fin = sorted((r for r in runs if r.status == "finished"), key=lambda r: r.seed)
    s.val_mean, s.val_std = mean_std([r.val for r in fin])  # type: ignore[misc]
    s.test_mean, s.test_std = mean_std([r.test for r in fin])  # type: ignore[misc]
    return s


@dataclass
class Cell:
    """One (model, task, method, ratio, setting) entry of a table."""

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
    setting: str = ""                     # setting hash shared by the cell's runs
    variant: str | None = None            # the fields that set it apart from other settings ('r=16')
    protocol: str = "clean"               # config protocol.name of the cell's runs
    selected_on: str = "val"              # "val" | "test": the metric that picked best_lr
    zero_shot: bool = False               # nothing trained: no LR selection (best_lr is None)

    @property
    def key(self) -> GroupKey:
        return GroupKey(self.model, self.task, self.method, self.ratio, self.setting)

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
            "setting": self.setting,
            "variant": self.variant,
            "protocol": self.protocol,
            "selected_on": self.selected_on,
            "zero_shot": self.zero_shot,
            "grid": self.grid,
            "lrs": [asdict(s) for s in self.lrs],
            "flags": [asdict(f) for f in self.flags],
        }


def _lr_text(lr: float) -> str:
    return f"{lr:g}"


def _select_best(stats: list[LRStat], diverged: str, select: str = "val") -> tuple[LRStat | None, list[LRStat]]:
    """The best LR by mean validation (``select="val"``) or test metric, and the LRs tied with it."""
    def score(s: LRStat) -> float | None:
        return s.val_mean if select == "val" else s.test_mean

    eligible = [s for s in stats if score(s) is not None and (diverged == "drop-seed" or not s.diverged)]
    if not eligible:
        return None, []
    top = max(score(s) for s in eligible)  # type: ignore[type-var]
    tied = [s for s in eligible if math.isclose(score(s), top, rel_tol=1e-9, abs_tol=1e-12)]  # type: ignore[arg-type]
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
        on = "validation" if cell.selected_on == "val" else "test"
        flags.append(Flag("tie", f"{on} tie between lr " + ", ".join(_lr_text(s.lr) for s in tied)
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
    # A hole inside the measured grid may hold the best LR; an LR outside it was swept where another task's
    # grid was extended, and the edge flag already says whether this cell's best is bracketed.
    holes = [x for x in absent if not cell.grid or cell.grid[0] < x < cell.grid[-1]]
    outside = [x for x in absent if x not in holes]
    if holes:
        flags.append(Flag("missing-lr", "no finished run at lr " + ", ".join(_lr_text(x) for x in holes)
                          + f" inside the grid {grid_text} (swept for this model/method on other tasks or seeds)",
                          holes))
    if outside:
        flags.append(Flag("narrower-grid", "no finished run at lr " + ", ".join(_lr_text(x) for x in outside)
                          + f", outside the grid {grid_text} (swept for this model/method on other tasks or seeds)",
                          outside))
    return flags


def _zero_shot_stat(stats: list[LRStat]) -> LRStat | None:
    """The summary a zero-shot cell reports: the LR with the most finished seeds (then the smallest)."""
    done = [s for s in stats if s.finished]
    return min(done, key=lambda s: (-len(s.finished), s.lr)) if done else None


def _zero_shot_flags(stat: LRStat | None, expected_seeds: set[int]) -> list[Flag]:
    if stat is None:
        return [Flag("no-best", "no finished run")]
    lacking = sorted(expected_seeds - set(stat.finished))
    return [Flag("missing-seeds", f"{len(stat.finished)} of {len(expected_seeds)} seeds (missing seed "
                                  f"{', '.join(map(str, lacking))})")] if lacking else []


def aggregate(runs: Iterable[RunResult], diverged: str = "skip-lr", select: str = "val") -> list[Cell]:
    """All cells of ``runs``, sorted by (model, task, method, ratio descending, variant); the best LR
    of each cell by mean ``select`` metric (``val`` or ``test``).

    Expected seeds are every seed seen for the cell's (experiment, model, task): a study may give its
    tasks different seed sets (`rmpeft-sweep --dry-run` counts what a sweep file still lacks); the
    expected LR grid of a cell is every LR seen for its (experiment, model, method, ratio, variant) on
    any task: one absent inside the cell's measured grid is a hole (`missing-lr`), one outside it a
    grid extended elsewhere (`narrower-grid`).
    """
    if diverged not in DIVERGED_POLICIES:
        raise unknown_choice("diverged policy", diverged, DIVERGED_POLICIES)
    if select not in SELECTIONS:
        raise unknown_choice("select", select, SELECTIONS)
    runs = dedupe(runs)
    check_single_experiment(runs)
    settings = setting_variants(runs)
    seeds_of: dict[tuple[str, str, str], set[int]] = defaultdict(set)
    lrs_of: dict[tuple, set[float]] = defaultdict(set)
    groups: dict[GroupKey, list[RunResult]] = defaultdict(list)
    for r in runs:
        seeds_of[(r.experiment, r.model, r.task)].add(r.seed)
        if not r.zero_shot:
            lrs_of[(r.experiment, r.model, r.method, r.ratio, settings.variant[r.group])].add(r.lr)
        groups[r.group].append(r)

    cells = []
    for key, members in groups.items():
        by_lr: dict[float, list[RunResult]] = defaultdict(list)
        for r in members:
            by_lr[r.lr].append(r)
        stats = [summarize_lr(lr, by_lr[lr]) for lr in sorted(by_lr)]
        zero_shot = all(r.zero_shot for r in members)
        grid = [s.lr for s in stats if s.done] if not zero_shot else []
        best, tied = (_zero_shot_stat(stats), []) if zero_shot else _select_best(stats, diverged, select)
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
            best_lr=None if best is None or zero_shot else best.lr,
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
            setting=key.setting,
            variant=settings.variant[key],
            protocol=members[0].protocol,
            selected_on=select,
            zero_shot=zero_shot,
        )
        seeds = seeds_of[(experiment, key.model, key.task)]
        cell.flags = _zero_shot_flags(best, seeds) if zero_shot else _cell_flags(
            cell, tied, seeds, lrs_of[(experiment, key.model, key.method, key.ratio, cell.variant)],
            diverged,
        )
        commits = Counter(r.git_commit[:7] for r in members if r.status in DONE_STATUSES and r.git_commit)
        if len(commits) > 1:   # the identity covers the config, not the code: say so where code varies
            cell.flags.append(Flag("commits", f"runs from {len(commits)} rmpeft commits ("
                                   + ", ".join(f"{c}: {n}" for c, n in sorted(commits.items()))
                                   + "): check that the code changes between them do not change results"))
        mixed = settings.differing.get((key.model, key.method, key.ratio, key.task))
        if mixed:
            cell.flags.append(Flag("mixed", f"runs of this method with different settings (differing in "
                                            f"{', '.join(mixed)}): shown as separate rows, never averaged"))
        cells.append(cell)
    cells.sort(key=lambda c: (c.model, c.task, c.method, -(c.ratio if c.ratio is not None else math.inf),
                              c.variant or ""))
    return cells
