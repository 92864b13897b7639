"""How well each LR estimator predicts the grids' best learning rates: ``rmpeft-lr --evaluate``.

    rmpeft-lr --evaluate results/cpu-study [--cache FILE] [--out FILE] [--refresh] [--write-constants]

For every (model, task, method, ratio) cell of the records (:func:`rmpeft.reporting.aggregate.aggregate`,
best LR by mean validation metric) one finished record is taken (the best LR's, its lowest seed), its
stored config is built as ``rmpeft-train`` would and measured before any update
(:func:`rmpeft.analysis.lr_measure.measure`, every quantity). The measured quantities are cached per
cell in a JSON file (``--cache``), so a re-evaluation measures only new cells.

Each estimator is then judged on every cell with a constant calibrated on the cells of the *other*
tasks (leave-one-task-out, per optimizer; :mod:`rmpeft.lr_auto.calibration`); an estimator whose
constant comes from theory is not calibrated. Where the records hold a single task, leave-one-task-out
has nothing to fit on and the weaker leave-one-cell-out is reported instead, labelled as such. A cell
is a hit when the prediction lies within half a decade (a factor 10**0.5 ~ 3.16) of the best LR;
the run a user would get is the grid LR nearest the prediction (on a log scale), whose mean test
metric is compared with that of the best LR.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rmpeft.errors import USAGE_EXIT, RmpeftError
from rmpeft.lr_auto.calibration import Point, fit_constant, leave_one_cell_out, leave_one_task_out, write_constants
from rmpeft.lr_auto.estimators import ESTIMATORS, get_estimator
from rmpeft.lr_auto.settings import LRAutoSettings
from rmpeft.records import read_record, setting_hash
from rmpeft.reporting.aggregate import Cell, aggregate
from rmpeft.reporting.paper import lr_text, method_label, model_label, percent_text, task_label
from rmpeft.reporting.runs import RunResult, run_from_record
from rmpeft.reporting.sources import load_records
from rmpeft.validation import check_writable_file

HALF_DECADE = 0.5          # |log10(predicted / best)| within this: a hit
LOTO, LOCO, THEORY = "leave-one-task-out", "leave-one-cell-out", "theory"
DEFAULT_DIR = Path("results/lr-prediction")

# (stored config, wanted curvature quantities, batches, power_iters) -> quantities
Measure = Callable[[dict[str, Any], Sequence[str], int, int], dict[str, Any]]


@dataclass
class Case:
    """One cell of the records and the record whose config is measured for it."""

    name: str
    model: str
    task: str
    method: str
    ratio: float | None
    optimizer: str
    best_lr: float
    best_test: float | None
    grid: list[tuple[float, float | None]]      # (lr, mean test metric; None: no finished seed)
    record: str
    seed: int
    key: str                                    # cache key: setting, seed, measurement settings
    quantities: dict[str, Any] | None = None
    grid_val: list[tuple[float, float | None]] = field(default_factory=list)   # (lr, mean validation metric)


@dataclass
class Judgement:
    """One estimator's prediction for one case."""

    estimator: str
    case: str
    task: str
    calibration: str                 # LOTO | LOCO | THEORY
    calibration_cells: int
    predicted: float | None
    best_lr: float
    log10_error: float | None        # log10(predicted / best)
    hit: bool | None
    nearest_lr: float | None         # the grid LR nearest the prediction
    nearest_test: float | None
    best_test: float | None
    reason: str | None = None        # why there is no prediction
    three_lrs: list[float] | None = None   # the 3 grid LRs nearest the prediction (what lr_grid=auto:3 runs)
    three_test: float | None = None        # test metric at the best validation LR among them

    @property
    def test_gap(self) -> float | None:
        """Test metric of the best LR minus that of the grid LR nearest the prediction (fraction)."""
        if self.nearest_test is None or self.best_test is None:
            return None
        return self.best_test - self.nearest_test

    @property
    def three_gap(self) -> float | None:
        """Test metric of the best LR minus that of the best of the 3 grid LRs around the prediction."""
        if self.three_test is None or self.best_test is None:
            return None
        return self.best_test - self.three_test


@dataclass
class Summary:
    estimator: str
    calibration: str
    judged: int
    hits: int
    mean_abs_log10_error: float | None
    mean_test_gap: float | None      # fraction; over judged cells whose nearest LR has a test metric
    without_test: int = 0            # judged cells whose nearest grid LR has no finished run (diverged)
    mean_three_gap: float | None = None   # fraction; the same for the best of the 3 grid LRs around it

    @property
    def hit_rate(self) -> float | None:
        return self.hits / self.judged if self.judged else None


@dataclass
class Evaluation:
    cases: list[Case]
    judgements: list[Judgement]
    summaries: list[Summary]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"cases": [asdict(c) for c in self.cases],
                "judgements": [asdict(j) | {"test_gap": j.test_gap, "three_gap": j.three_gap} for j in self.judgements],
                "summaries": [asdict(s) | {"hit_rate": s.hit_rate} for s in self.summaries],
                "notes": self.notes}


def case_name(model: str, task: str, method: str, ratio: float | None, variant: str | None = None) -> str:
    text = f"{model_label(model)} {task_label(task)} {method_label(method)}"
    text += f" {percent_text(ratio)}" if ratio is not None else ""
    return text + (f" ({variant})" if variant else "")


UNSETTLED_FLAGS = ("edge", "missing-lr", "running", "failed", "no-best")


def unsettled(cell: Cell) -> str | None:
    """Why ``cell``'s best LR is not yet a best (its first such flag kind), or None: a best at the edge of
    its grid is only a bound, and a grid with holes or runs going or failed may still move it (an LR swept
    only on another task, outside this cell's grid, is a `narrower-grid` flag and leaves it settled)."""
    return next((f.kind for f in cell.flags if f.kind in UNSETTLED_FLAGS), None)


def cases_from_runs(cells: Iterable[Cell], runs: Sequence[RunResult], batches: int, power_iters: int,
                    left_out: list[str] | None = None) -> list[Case]:
    """A case per cell with a settled best LR (:func:`unsettled`) that learned something (its best mean
    validation metric above the zero-shot cell's of the same model and task, where there is one: otherwise
    every LR failed alike and the best is noise): the finished record of that LR with the lowest seed.
    Cells left out are appended to ``left_out`` as 'name (why)'."""
    cells = list(cells)
    zero_val = {(c.model, c.task): c.val_mean for c in cells if c.zero_shot and c.val_mean is not None}
    out = []
    for cell in cells:
        if cell.zero_shot or cell.best_lr is None:
            continue
        why = unsettled(cell)
        floor = zero_val.get((cell.model, cell.task))
        if why is None and floor is not None and (cell.val_mean is None or cell.val_mean <= floor):
            why = "no better than zero-shot on validation"
        if why is not None:
            if left_out is not None:
                left_out.append(f"{case_name(cell.model, cell.task, cell.method, cell.ratio, cell.variant)} ({why})")
            continue
        at_best = sorted((r for r in runs if r.group == cell.key and r.lr == cell.best_lr and r.status == "finished"),
                         key=lambda r: r.seed)
        if not at_best:
            continue
        record = read_record(Path(at_best[0].source)) or {}
        config = record.get("config") or {}
        grid = [(s.lr, s.test_mean) for s in cell.lrs if s.done]
        grid_val = [(s.lr, s.val_mean) for s in cell.lrs if s.done]
        out.append(Case(
            name=case_name(cell.model, cell.task, cell.method, cell.ratio, cell.variant),
            model=cell.model, task=cell.task, method=cell.method, ratio=cell.ratio,
            optimizer=str((config.get("optim") or {}).get("name", "adamw")),
            best_lr=cell.best_lr, best_test=cell.test_mean, grid=grid, record=at_best[0].source,
            seed=at_best[0].seed, key=f"{setting_hash(config)}-seed{at_best[0].seed}-b{batches}-p{power_iters}",
            grid_val=grid_val,
        ))
    return out


def measure_record_config(config: dict[str, Any], wanted: Sequence[str], batches: int,
                          power_iters: int) -> dict[str, Any]:
    """The ``wanted`` quantities of the run a record's stored config describes (built as ``rmpeft-train``
    would), with the gradient quantities always."""
    from omegaconf import OmegaConf

    from rmpeft.analysis.lr_measure import build_trained_run, measure

    run = build_trained_run(OmegaConf.create({k: v for k, v in config.items() if k != "hydra"}))
    try:
        return measure(run, wanted, batches, power_iters)
    finally:
        del run
        gc.collect()


def fill_quantities(cases: list[Case], cache: Path, measure: Measure, wanted: Sequence[str], batches: int,
                    power_iters: int, refresh: bool = False, say: Callable[[str], None] = print) -> None:
    """Each case's quantities (at least ``wanted``), from the cache file or measured (and then written to
    it at once)."""
    stored: dict[str, Any] = json.loads(cache.read_text()) if cache.is_file() and not refresh else {}
    for i, case in enumerate(cases, 1):
        if case.key in stored and all(stored[case.key].get(q) is not None for q in wanted):
            case.quantities = stored[case.key]
            continue
        say(f"[{i}/{len(cases)}] measuring {case.name} (seed {case.seed}) ...")
        config = (read_record(Path(case.record)) or {}).get("config") or {}
        case.quantities = stored[case.key] = {**stored.get(case.key, {}), **measure(config, wanted, batches, power_iters)}
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(stored, indent=2, sort_keys=True) + "\n")


def points_of(cases: Iterable[Case], estimator: str) -> list[Point]:
    """The calibration points of ``estimator`` (cases whose quantities give it a positive scale)."""
    est = get_estimator(estimator)
    out = []
    for c in cases:
        try:
            scale = est.lr_scale(c.quantities or {})
        except RmpeftError:
            continue
        out.append(Point(c.task, c.name, math.log10(c.best_lr), math.log10(scale)))
    return out


def nearest_grid_lr(grid: Sequence[tuple[float, float | None]], lr: float) -> tuple[float, float | None]:
    """The grid point nearest ``lr`` on a log scale (the smaller LR on a tie)."""
    return min(grid, key=lambda p: (abs(math.log10(p[0]) - math.log10(lr)), p[0]))


def best_of_nearest(case: Case, lr: float, k: int = 3) -> tuple[list[float], float | None]:
    """What ``lr_grid=auto:k`` would have found, read off the grid: the points it runs (``k`` LRs half a
    decade apart centred on ``lr``), each stood in for by the grid LR within a quarter decade of it (a
    half-decade grid has at most one; a point with none was not measured and is dropped), and the test
    metric at the one of them with the best mean validation metric (None when none was measured)."""
    val = dict(case.grid_val)
    test = dict(case.grid)
    near = []
    for i in range(k):
        target = math.log10(lr) + HALF_DECADE * (i - (k - 1) / 2)
        x = min(test, key=lambda x: (abs(math.log10(x) - target), x))
        if abs(math.log10(x) - target) <= HALF_DECADE / 2 + 1e-9 and x not in near:
            near.append(x)
    scored = [x for x in near if val.get(x) is not None]
    if not scored:
        return near, None
    pick = max(scored, key=lambda x: (val[x], -x))
    return near, test.get(pick)


def judge(cases: list[Case], estimator: str, optim_of: Callable[[Case], dict[str, Any]]) -> list[Judgement]:
    """``estimator`` on every case, its constant never fitted on the judged task (or, with one task in
    the records, on the judged cell)."""
    est = get_estimator(estimator)
    out = []
    for case in cases:
        same_optimizer = [c for c in cases if c.optimizer == case.optimizer]
        points = points_of(same_optimizer, estimator)
        reason = None
        try:
            scale = est.lr_scale(case.quantities or {})
        except RmpeftError as e:
            scale, reason = None, str(e)
        if est.theory_constant is not None:
            log_c, used, how = math.log10(est.theory_constant(optim_of(case))), 0, THEORY
        else:
            log_c, used = leave_one_task_out(points, case.task)
            how = LOTO
            if log_c is None and len({p.task for p in points}) <= 1:
                log_c, used = leave_one_cell_out(points, case.name)
                how = LOCO
            if log_c is None and reason is None:
                reason = "no other cell to calibrate on"
        predicted = None if scale is None or log_c is None else 10 ** log_c * scale
        error = None if predicted is None else math.log10(predicted / case.best_lr)
        nearest = nearest_grid_lr(case.grid, predicted) if predicted is not None and case.grid else (None, None)
        three = best_of_nearest(case, predicted) if predicted is not None and case.grid else (None, None)
        out.append(Judgement(estimator, case.name, case.task, how, used, predicted, case.best_lr, error,
                             None if error is None else abs(error) <= HALF_DECADE + 1e-9, nearest[0], nearest[1],
                             case.best_test, reason, three[0], three[1]))
    return out


def summarize(judgements: list[Judgement]) -> list[Summary]:
    out = []
    for name in dict.fromkeys(j.estimator for j in judgements):
        js = [j for j in judgements if j.estimator == name and j.predicted is not None]
        gaps = [j.test_gap for j in js if j.test_gap is not None]
        threes = [j.three_gap for j in js if j.three_gap is not None]
        how = sorted({j.calibration for j in js}) or ["-"]
        out.append(Summary(name, "/".join(how), len(js), sum(bool(j.hit) for j in js),
                           statistics.fmean(abs(j.log10_error) for j in js if j.log10_error is not None) if js else None,
                           statistics.fmean(gaps) if gaps else None, len(js) - len(gaps),
                           statistics.fmean(threes) if threes else None))
    return out


def evaluate(cases: list[Case], estimators: Sequence[str], optim_of: Callable[[Case], dict[str, Any]]) -> Evaluation:
    judgements = [j for name in estimators for j in judge(cases, name, optim_of)]
    return Evaluation(cases, judgements, summarize(judgements))


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def render(evaluation: Evaluation) -> str:
    """The summary table and the per-cell table (Markdown)."""
    tasks = sorted({c.task for c in evaluation.cases})
    lines = [f"### LR prediction: {len(evaluation.cases)} cells, {len(tasks)} task(s) ({', '.join(tasks)})", "",
             "| Estimator | Constant | Cells judged | Within half a decade | Mean abs log10 error | "
             "Test gap at the nearest grid LR (points) | Test gap, best of 3 LRs around it (points) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for s in evaluation.summaries:
        rate = "—" if s.hit_rate is None else f"{s.hits}/{s.judged} ({100 * s.hit_rate:.0f}%)"
        err = "—" if s.mean_abs_log10_error is None else f"{s.mean_abs_log10_error:.2f}"
        gap = "—" if s.mean_test_gap is None else f"{100 * s.mean_test_gap:.1f}"
        if s.without_test:
            gap += f" ({s.without_test} without a finished run)"
        three = "—" if s.mean_three_gap is None else f"{100 * s.mean_three_gap:.1f}"
        lines.append(f"| {s.estimator} | {s.calibration} | {s.judged} | {rate} | {err} | {gap} | {three} |")
    names = [s.estimator for s in evaluation.summaries]
    lines += ["", "| Cell | Best LR (test) | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
    by = {(j.estimator, j.case): j for j in evaluation.judgements}
    for c in evaluation.cases:
        row = [c.name, f"{lr_text(c.best_lr)} ({_pct(c.best_test)})"]
        for name in names:
            j = by.get((name, c.name))
            if j is None or j.predicted is None:
                row.append("—")
            else:
                row.append(f"{j.predicted:.2g} {'✓' if j.hit else '✗'} ({_pct(j.nearest_test)})")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "cells: predicted LR, ✓ within half a decade of the best validation LR, (test % at the grid LR "
              "nearest the prediction); constants fitted on the other tasks' cells (leave-one-task-out), or where "
              "the records hold one task on its other cells (leave-one-cell-out)."]
    return "\n".join(lines + evaluation.notes) + "\n"


def _at_least_one(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value '{text}'; expected an integer >= 1")
    return value


def evaluation_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rmpeft-lr --evaluate", description="Judge every LR estimator on the cells "
                                "of a results folder (constants calibrated leave-one-task-out).")
    p.add_argument("--evaluate", dest="roots", action="append", required=True, metavar="RESULTS_DIR",
                   help="results folder to read records from; repeatable")
    p.add_argument("--cache", type=Path, default=None,
                   help=f"JSON of the measured quantities per cell (default {DEFAULT_DIR}/<folder>.quantities.json)")
    p.add_argument("--out", type=Path, default=None,
                   help=f"JSON of the whole evaluation (default {DEFAULT_DIR}/<folder>.json)")
    p.add_argument("--refresh", action="store_true", help="measure every cell again (ignore the cache)")
    p.add_argument("--estimator", action="append", choices=tuple(ESTIMATORS), help="only these; repeatable")
    p.add_argument("--batches", type=_at_least_one, default=LRAutoSettings.batches, help="training batches measured")
    p.add_argument("--power-iters", type=_at_least_one, default=LRAutoSettings.power_iters,
                   help="power-iteration steps")
    p.add_argument("--write-constants", action="store_true",
                   help="store the constants fitted on all cells as the package's calibrated constants")
    return p


def evaluate_results(roots: Sequence[str], cache: Path, estimators: Sequence[str], batches: int, power_iters: int,
                     refresh: bool = False, measure: Measure = measure_record_config,
                     say: Callable[[str], None] = print) -> Evaluation:
    """Measure (or read from ``cache``) and judge every cell of the records under ``roots``."""
    pairs = load_records(list(roots), "disk", report=lambda text: say(f"warning: {text}; skipped"))
    runs = []
    for src, rec in pairs:
        try:
            runs.append(run_from_record(rec, src))
        except RmpeftError as e:
            say(f"warning: {e}; skipped")
    if not runs:
        raise RmpeftError(f"no run records in {', '.join(roots)}")
    left_out: list[str] = []
    cases = cases_from_runs(aggregate(runs), runs, batches, power_iters, left_out)
    if left_out:
        say(f"{len(left_out)} cells left out (best LR not settled: at a grid edge, or runs missing, going or failed; "
            "or no LR better than zero-shot): " + ", ".join(left_out))
    if not cases:
        raise RmpeftError(f"no cell with a settled best learning rate in {', '.join(roots)}")
    wanted = sorted({q for name in estimators for q in get_estimator(name).needs})
    fill_quantities(cases, cache, measure, wanted, batches, power_iters, refresh, say)
    optim = {c.record: ((read_record(Path(c.record)) or {}).get("config") or {}).get("optim") or {} for c in cases}
    return evaluate(cases, estimators, lambda c: optim[c.record])


def calibrate_all(evaluation: Evaluation, source: str) -> None:
    """Write the constants fitted on every case (per optimizer) as the package's calibrated constants."""
    fitted: dict[str, dict[str, float | None]] = {}
    counts: dict[str, dict[str, int]] = {}
    for optimizer in sorted({c.optimizer for c in evaluation.cases}):
        members = [c for c in evaluation.cases if c.optimizer == optimizer]
        for name, est in ESTIMATORS.items():
            if est.calibrated:
                points = points_of(members, name)
                fitted.setdefault(optimizer, {})[name] = fit_constant(points)
                counts.setdefault(optimizer, {})[name] = len(points)
    write_constants(fitted, counts, source)


def evaluate_main(argv: Sequence[str]) -> int:
    args = evaluation_parser().parse_args(list(argv))
    stem = "+".join(Path(r).name for r in args.roots)
    cache = args.cache or DEFAULT_DIR / f"{stem}.quantities.json"
    out = args.out or DEFAULT_DIR / f"{stem}.json"
    try:
        check_writable_file(out, f"--out {out}")       # before hours of measuring
        check_writable_file(cache, f"--cache {cache}")
        evaluation = evaluate_results(args.roots, cache, args.estimator or list(ESTIMATORS), args.batches,
                                      args.power_iters, args.refresh, say=lambda t: print(t, file=sys.stderr))
    except RmpeftError as e:
        print(f"rmpeft-lr: error: {e}", file=sys.stderr)
        return USAGE_EXIT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(evaluation.to_json(), indent=2) + "\n")
    print(render(evaluation), end="")
    print(f"wrote {out} (measured quantities: {cache})", file=sys.stderr)
    if args.write_constants:
        tasks = sorted({c.task for c in evaluation.cases})
        calibrate_all(evaluation, f"{stem} ({len(evaluation.cases)} cells; tasks {', '.join(tasks)})")
        print("wrote the calibrated constants to rmpeft/lr_auto/constants.json", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------------------
# rmpeft-tables --table lr-auto: the predicted LR against the grid's best, per cell.

LR_AUTO_TABLE = "lr-auto"


@dataclass
class PredictionRow:
    """One grid cell and the LR predicted for it: by ``optim.lr=auto`` runs (their mean prediction and
    mean test metric over seeds) or by an evaluation's judgement (test at the grid LR nearest it)."""

    name: str
    best_lr: float
    best_test: float | None
    predicted: float
    test_at_predicted: float | None
    source: str                      # "lr=auto runs" | "<estimator>, <calibration>"
    task: str = ""                   # the cell's task and method labels (figure legends)
    method: str = ""

    @property
    def factor(self) -> float:
        return self.predicted / self.best_lr

    @property
    def hit(self) -> bool:
        return abs(math.log10(self.factor)) <= HALF_DECADE + 1e-9


def _plain_setting(run: RunResult) -> str:
    """The setting hash of a run without its ``optim.lr_auto`` settings (an ``lr=auto`` run's grid cell)."""
    from rmpeft.identity import digest

    tree = json.loads(json.dumps(run.setting_tree))
    (tree.get("optim") or {}).pop("lr_auto", None)
    return digest(tree)


def prediction_rows(runs: Sequence[RunResult], evaluation: dict[str, Any] | None = None,
                    estimator: str | None = None) -> list[PredictionRow]:
    """Rows for the grid cells of ``runs`` that have a prediction: from the ``optim.lr=auto`` runs among
    ``runs``, else from ``evaluation`` (the JSON ``rmpeft-lr --evaluate`` writes; ``estimator``, default
    the one with the best hit rate)."""
    grid_runs = [r for r in runs if not r.lr_auto]
    auto_runs = [r for r in runs if r.lr_auto]
    cells = [c for c in aggregate(grid_runs) if not c.zero_shot and c.best_lr is not None] if grid_runs else []
    judged: dict[str, dict[str, Any]] = {}
    label = ""
    if evaluation:
        summaries = evaluation.get("summaries") or []
        judges = sorted({s.get("estimator") for s in summaries} | {j.get("estimator") for j in
                                                                  evaluation.get("judgements") or []} - {None})
        if estimator is not None and estimator not in judges:
            raise RmpeftError(f"--lr-auto-estimator {estimator}: the evaluation judges only {', '.join(judges) or 'none'}")
        if estimator is None and summaries:
            estimator = max(summaries, key=lambda s: (s.get("hits") or 0, -(s.get("mean_abs_log10_error") or 9)))[
                "estimator"]
        judged = {j["case"]: j for j in evaluation.get("judgements") or []
                  if j["estimator"] == estimator and j.get("predicted")}
    out = []
    for cell in cells:
        name = case_name(cell.model, cell.task, cell.method, cell.ratio, cell.variant)
        labels = (task_label(cell.task), method_label(cell.method) + (f" {percent_text(cell.ratio)}" if cell.ratio else ""))
        mine = [r for r in auto_runs if (r.model, r.task, r.method, r.ratio) == (cell.model, cell.task, cell.method,
                                                                               cell.ratio)
                and _plain_setting(r) == cell.setting]
        if mine:
            tests = [r.test for r in mine if r.status == "finished" and r.test is not None]
            out.append(PredictionRow(name, cell.best_lr, cell.test_mean, statistics.fmean(r.lr for r in mine),
                                     statistics.fmean(tests) if tests else None, "lr=auto runs", *labels))
        elif name in judged:
            j = judged[name]
            label = f"{estimator}, {j['calibration']}"
            out.append(PredictionRow(name, cell.best_lr, cell.test_mean, float(j["predicted"]), j.get("nearest_test"),
                                     label, *labels))
    return out


def render_prediction_table(rows: Sequence[PredictionRow], fmt: str = "markdown") -> str:
    """The lr-auto table in ``markdown``, ``csv`` or ``latex``."""
    header = ["Cell", "Predicted LR", "Best LR", "Predicted / best", "Within half a decade",
              "Test at predicted (%)", "Test at best (%)", "Source"]
    body = [[r.name, f"{r.predicted:.3g}", lr_text(r.best_lr), f"{r.factor:.2g}", "yes" if r.hit else "no",
             _pct(r.test_at_predicted), _pct(r.best_test), r.source] for r in rows]
    hits = sum(r.hit for r in rows)
    gaps = [r.best_test - r.test_at_predicted for r in rows if r.best_test is not None and r.test_at_predicted is not None]
    note = (f"{hits}/{len(rows)} cells within half a decade of the best validation LR; mean test gap "
            f"{'—' if not gaps else f'{100 * statistics.fmean(gaps):.1f}'} points. Test at predicted: the lr=auto "
            "runs' own test metric, or for an evaluation the test metric of the grid LR nearest the prediction.")
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        csv.writer(buf).writerows([header] + body)
        return buf.getvalue()
    if fmt == "latex":
        esc = [[c.replace("%", r"\%").replace("_", r"\_") for c in row] for row in [header] + body]
        lines = [r"\begin{tabular}{l" + "r" * (len(header) - 2) + "l}", r"\toprule", " & ".join(esc[0]) + r" \\",
                 r"\midrule"] + [" & ".join(row) + r" \\" for row in esc[1:]] + [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines) + "\n"
    lines = ["### Predicted learning rate (optim.lr=auto) against the grid's best validation LR", "",
             "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 2) + "---|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines + ["", note]) + "\n"


def read_evaluation(path: Path) -> dict[str, Any]:
    """The JSON ``rmpeft-lr --evaluate`` wrote; a one-line error when it cannot be read."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RmpeftError(f"--lr-auto {path}: cannot read an LR-prediction evaluation ({e})") from None
    if not isinstance(data, dict) or "judgements" not in data:
        raise RmpeftError(f"--lr-auto {path}: not an LR-prediction evaluation (no 'judgements'); expected the JSON "
                          "rmpeft-lr --evaluate writes")
    return data
