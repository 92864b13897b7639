"""Best-LR selection, flags and the LR predictor on hand-written run records."""

from __future__ import annotations

import statistics

import pytest

from rmpeft.reporting.aggregate import aggregate
from rmpeft.reporting.predictor import fit_lr_scaling
from rmpeft.reporting.runs import RunResult, dedupe, run_from_record, runs_from_records
from rmpeft.errors import RmpeftError


def record(task="rte", method="masking", ratio=0.001, lr=1e-2, seed=0, val=0.5, test=0.5, status="finished",
           model="opt-125m", name="default", finished_at=None):
    method_cfg = {"name": method} if ratio is None else {"name": method, "ratio": ratio}
    done = status == "finished"
    return {
        "status": status,
        "error": "loss is nan" if status == "diverged" else ("boom\nTraceback" if status == "failed" else None),
        "config": {"name": name, "seed": seed, "model": {"name": model}, "task": {"name": task},
                   "method": method_cfg, "optim": {"lr": lr}},
        "val_metric": val if done else None,
        "test_metric": test if done else None,
        "metric": "accuracy",
        "trainable_share": 1.0 if method == "ft" else ratio,
        "finished_at": finished_at,
    }


def runs(*records):
    return runs_from_records((f"r{i}", r) for i, r in enumerate(records))


def only(cells):
    assert len(cells) == 1
    return cells[0]


def kinds(cell):
    return [f.kind for f in cell.flags]


def test_best_lr_is_chosen_on_validation_not_test():
    cells = aggregate(runs(
        # lr 1e-2: best validation, worse test
        record(lr=1e-2, seed=0, val=0.80, test=0.60), record(lr=1e-2, seed=1, val=0.78, test=0.64),
        # lr 1e-1: worse validation, best test
        record(lr=1e-1, seed=0, val=0.70, test=0.90), record(lr=1e-1, seed=1, val=0.72, test=0.88),
        # lr 1e-3: worst on both
        record(lr=1e-3, seed=0, val=0.50, test=0.50), record(lr=1e-3, seed=1, val=0.50, test=0.50),
    ))
    c = only(cells)
    assert c.best_lr == 1e-2
    assert c.val_mean == pytest.approx(0.79)
    assert c.test_mean == pytest.approx(0.62)
    assert c.test_std == pytest.approx(statistics.stdev([0.60, 0.64]))
    assert c.n_seeds == 2
    assert c.edge_of_grid is False and c.edge is None
    assert c.grid == [1e-3, 1e-2, 1e-1]
    assert c.flags == []


def test_tie_goes_to_more_seeds_then_smaller_lr():
    c = only(aggregate(runs(
        record(lr=1e-3, seed=0, val=0.7, test=0.1), record(lr=1e-3, seed=1, val=0.7, test=0.2),
        record(lr=1e-2, seed=0, val=0.7, test=0.3), record(lr=1e-2, seed=1, val=0.7, test=0.4),
        record(lr=1e-1, seed=0, val=0.1, test=0.9), record(lr=1e-1, seed=1, val=0.1, test=0.9),
    )))
    assert c.best_lr == 1e-3
    assert c.test_mean == pytest.approx(0.15)
    assert "tie" in kinds(c)
    assert next(f.message for f in c.flags if f.kind == "tie") == (
        "validation tie between lr 0.001, 0.01; chose 0.001 (more seeds, then smaller LR)")

    # the same tie, but lr 1e-3 lost a seed: the LR with more seeds wins
    c = only(aggregate(runs(
        record(lr=1e-3, seed=0, val=0.7, test=0.1),
        record(lr=1e-2, seed=0, val=0.7, test=0.3), record(lr=1e-2, seed=1, val=0.7, test=0.4),
        record(lr=1e-1, seed=0, val=0.1, test=0.9), record(lr=1e-1, seed=1, val=0.1, test=0.9),
    )))
    assert c.best_lr == 1e-2
    assert "missing-seeds" in kinds(c)


def test_float_noise_counts_as_a_tie():
    # 0.1+0.2 and 0.3 differ in the last bit: the same accuracy measured twice
    c = only(aggregate(runs(record(lr=1e-2, val=0.1 + 0.2, test=0.5), record(lr=1e-3, val=0.3, test=0.6),
                            record(lr=1e-1, val=0.0, test=0.0))))
    assert c.best_lr == 1e-3 and "tie" in kinds(c)


def test_missing_seeds_are_flagged_and_counted():
    c = only(aggregate(runs(
        record(lr=1e-2, seed=0, val=0.9, test=0.8), record(lr=1e-2, seed=1, val=0.9, test=0.7),
        record(lr=1e-3, seed=0, val=0.5, test=0.5), record(lr=1e-3, seed=1, val=0.5, test=0.5),
        record(lr=1e-3, seed=2, val=0.5, test=0.5), record(lr=1e-1, seed=0, val=0.1, test=0.1),
        record(lr=1e-1, seed=1, val=0.1, test=0.1), record(lr=1e-1, seed=2, val=0.1, test=0.1),
    )))
    assert c.best_lr == 1e-2 and c.n_seeds == 2
    assert c.test_mean == pytest.approx(0.75)
    msgs = [f.message for f in c.flags if f.kind == "missing-seeds"]
    assert msgs == ["lr 0.01: 2 of 3 seeds (missing seed 2)"]


def test_expected_seeds_span_the_task_not_just_the_cell():
    # a study may give tasks different seed sets (rte 0,1,2; wic 0 only, by design): each task's cells are
    # compared with the seeds seen on that task, so sst2, with seed 1 at one LR only, lacks it at the other two
    rs = [record(task="rte", lr=lr, seed=s, val=0.5 + lr, test=0.5) for lr in (1e-3, 1e-2, 1e-1) for s in (0, 1, 2)]
    rs += [record(task="wic", lr=lr, seed=0, val=0.5 + lr, test=0.5) for lr in (1e-3, 1e-2, 1e-1)]
    rs += [record(task="sst2", lr=lr, seed=0, val=0.5 + lr, test=0.5) for lr in (1e-3, 1e-2, 1e-1)]
    rs += [record(task="sst2", lr=1e-3, seed=1, val=0.5, test=0.5)]
    cells = {c.task: c for c in aggregate(runs(*rs))}
    assert "missing-seeds" not in kinds(cells["rte"])
    assert "missing-seeds" not in kinds(cells["wic"])
    assert [f.message for f in cells["sst2"].flags if f.kind == "missing-seeds"] == [
        "lr 0.01: 1 of 2 seeds (missing seed 1)", "lr 0.1: 1 of 2 seeds (missing seed 1)"]


def test_diverged_runs_are_excluded_and_reported():
    rs = [
        record(lr=1e-1, seed=0, status="diverged"), record(lr=1e-1, seed=1, val=0.95, test=0.95),
        record(lr=1e-2, seed=0, val=0.80, test=0.70), record(lr=1e-2, seed=1, val=0.80, test=0.72),
        record(lr=1e-3, seed=0, val=0.60, test=0.60), record(lr=1e-3, seed=1, val=0.60, test=0.60),
    ]
    c = only(aggregate(runs(*rs)))
    # default: an LR at which a seed diverged is unstable and cannot be best
    assert c.best_lr == 1e-2 and c.test_mean == pytest.approx(0.71)
    assert c.grid == [1e-3, 1e-2, 1e-1]          # the diverged LR is part of the grid: not an edge
    assert c.edge_of_grid is False
    stat = next(s for s in c.lrs if s.lr == 1e-1)
    assert stat.diverged == [0] and stat.finished == [1] and stat.val_mean == pytest.approx(0.95)
    assert [f.message for f in c.flags if f.kind == "diverged"] == [
        "lr 0.1: seed 0 diverged (excluded from best-LR choice)"]

    # drop-seed: the diverged seed is dropped and the remaining seed averaged
    c = only(aggregate(runs(*rs), diverged="drop-seed"))
    assert c.best_lr == 1e-1 and c.n_seeds == 1 and c.test_std is None
    assert c.edge == "high"


def test_all_diverged_gives_no_best_lr():
    c = only(aggregate(runs(record(lr=1e-1, status="diverged"), record(lr=1.0, status="diverged"))))
    assert c.best_lr is None and c.test_mean is None and c.n_seeds == 0
    assert "no-best" in kinds(c) and kinds(c).count("diverged") == 2


@pytest.mark.parametrize("best, edge", [(1e-1, "high"), (1e-3, "low"), (1e-2, None)])
def test_edge_of_grid(best, edge):
    rs = [record(lr=lr, val=0.9 if lr == best else 0.5, test=0.5) for lr in (1e-3, 1e-2, 1e-1)]
    c = only(aggregate(runs(*rs)))
    assert c.best_lr == best and c.edge == edge and c.edge_of_grid is (edge is not None)
    msgs = [f.message for f in c.flags if f.kind == "edge"]
    if edge == "high":
        assert msgs == ["best lr 0.1 is the largest of the grid [0.001, 0.01, 0.1]: extend the grid upward"]
    elif edge == "low":
        assert msgs == ["best lr 0.001 is the smallest of the grid [0.001, 0.01, 0.1]: extend the grid downward"]
    else:
        assert msgs == []


def test_single_lr_is_an_edge():
    c = only(aggregate(runs(record(lr=1e-2))))
    assert c.edge == "only" and c.edge_of_grid


def test_failed_and_running_runs_are_reported_and_missing_lrs_flagged():
    rs = [record(task="sst2", lr=lr, val=0.5, test=0.5) for lr in (1e-3, 1e-2, 1e-1)]
    rs += [record(task="rte", lr=1e-3, val=0.6, test=0.6), record(task="rte", lr=1e-2, val=0.7, test=0.7),
           record(task="rte", lr=1e-1, status="failed"), record(task="rte", lr=1e-2, seed=1, status="running")]
    c = {c.task: c for c in aggregate(runs(*rs))}["rte"]
    assert c.grid == [1e-3, 1e-2]
    assert c.best_lr == 1e-2 and c.edge == "high"     # the failed LR does not count as measured
    msgs = {f.kind: f.message for f in c.flags}
    assert msgs["failed"] == "lr 0.1: seed 0 failed"
    assert msgs["running"] == "lr 0.01: seed 1 still running"
    assert "no finished run at lr 0.1" in msgs["narrower-grid"]     # above the measured grid: not a hole


def test_missing_lr_compared_with_the_grid_of_other_tasks():
    """An LR swept on another task and missing inside this cell's grid is a hole (incomplete); one missing
    outside it (a grid extended on one task only) is a narrower grid, reported but not incomplete."""
    from rmpeft.reporting.render import INCOMPLETE_MARK, _marks

    rs = [record(task="sst2", lr=lr, val=0.5, test=0.5) for lr in (1e-3, 1e-2, 1e-1, 1.0)]
    rs += [record(task="rte", lr=lr, val=v, test=v) for lr, v in ((1e-3, 0.5), (1e-1, 0.6), (1.0, 0.5))]
    rs += [record(task="wic", lr=lr, val=v, test=v) for lr, v in ((1e-3, 0.5), (1e-2, 0.6), (1e-1, 0.5))]
    cells = {c.task: c for c in aggregate(runs(*rs))}
    assert set(kinds(cells["sst2"])) & {"missing-lr", "narrower-grid"} == set()
    hole = next(f for f in cells["rte"].flags if f.kind == "missing-lr")
    assert hole.lrs == [1e-2] and hole.message.startswith("no finished run at lr 0.01 inside the grid")
    assert "narrower-grid" not in kinds(cells["rte"]) and INCOMPLETE_MARK in _marks(cells["rte"])
    narrower = next(f for f in cells["wic"].flags if f.kind == "narrower-grid")
    assert narrower.lrs == [1.0] and "missing-lr" not in kinds(cells["wic"])
    assert INCOMPLETE_MARK not in _marks(cells["wic"])


def test_groups_by_model_task_method_ratio():
    rs = [record(method="masking", ratio=r, lr=1e-2, val=v, test=v) for r, v in ((0.001, 0.6), (0.0001, 0.7))]
    rs += [record(method="ft", ratio=None, lr=1e-5, val=0.8, test=0.8), record(model="opt-1.3b", val=0.9, test=0.9)]
    cells = aggregate(runs(*rs))
    assert [(c.model, c.method, c.ratio, c.test_mean) for c in cells] == [
        ("opt-1.3b", "masking", 0.001, 0.9),
        ("opt-125m", "ft", None, 0.8),
        ("opt-125m", "masking", 0.001, 0.6),
        ("opt-125m", "masking", 0.0001, 0.7),
    ]


def test_runs_of_one_cell_from_two_experiments_are_refused():
    with pytest.raises(RmpeftError, match=r"several experiments \(default, long\); select one with --name"):
        aggregate(runs(record(name="default"), record(name="long", lr=1e-3)))


def test_duplicates_keep_the_done_then_latest_run():
    a = run_from_record(record(status="failed"), "a")
    b = run_from_record(record(val=0.3, test=0.3, finished_at="2024-01-01T00:00:00"), "b")
    c = run_from_record(record(val=0.4, test=0.4, finished_at="2024-02-01T00:00:00"), "c")
    assert [r.source for r in dedupe([a, b, c])] == ["c"]
    assert [r.source for r in dedupe([c, a])] == ["c"]


def test_run_from_record_checks_keys_and_metrics():
    bad = record()
    del bad["config"]["optim"]
    with pytest.raises(RmpeftError, match="run record x/record.json lacks config key.*optim.lr"):
        run_from_record(bad, "x/record.json")
    no_metric = record()
    no_metric["test_metric"] = None
    with pytest.raises(RmpeftError, match="invalid run record x/record.json: status 'finished' but it has no "
                                          "test_metric"):
        run_from_record(no_metric, "x/record.json")
    text_metric = record(val="0.5")
    with pytest.raises(RmpeftError, match="has val_metric='0.5', not a number"):
        run_from_record(text_metric, "x/record.json")
    assert run_from_record(record(status="failed")).error == "boom"
    assert isinstance(run_from_record(record()), RunResult)


def test_to_json_has_the_documented_keys():
    d = only(aggregate(runs(record(lr=1e-2, val=0.8, test=0.7), record(lr=1e-3, val=0.5, test=0.5)))).to_json()
    for key in ("model", "task", "method", "ratio", "best_lr", "val_mean", "test_mean", "test_std", "n_seeds",
                "edge_of_grid"):
        assert key in d
    assert (d["model"], d["task"], d["method"], d["ratio"], d["best_lr"], d["n_seeds"], d["edge_of_grid"]) == (
        "opt-125m", "rte", "masking", 0.001, 0.01, 1, True)


def _power_law_cells(slope, offsets, ratios, lr_grid=None):
    """Cells whose best LR is exactly 10**offset[task] * ratio**slope (each grid brackets it)."""
    rs = []
    for task, off in offsets.items():
        for ratio in ratios:
            best = 10 ** off * ratio**slope
            for lr in (best / 10, best, best * 10):
                rs.append(record(task=task, ratio=ratio, lr=lr, val=0.9 if lr == best else 0.5, test=0.5))
    return aggregate(runs(*rs))


def test_predictor_recovers_an_exact_power_law():
    cells = _power_law_cells(-0.5, {"rte": -4.0, "sst2": -3.0}, [0.01, 0.001, 0.0001])
    (fit,) = fit_lr_scaling(cells)
    assert fit.slope == pytest.approx(-0.5)
    assert fit.intercepts == pytest.approx({"rte": -4.0, "sst2": -3.0})
    assert fit.n_points == 6 and fit.n_ratios == 3 and fit.n_edge == 0
    assert fit.r2 == pytest.approx(1.0)
    assert fit.predict(1e-5, "rte") == pytest.approx(10**-4.0 * 1e-5**-0.5)
    assert fit.predict(1e-5) == pytest.approx(10**-3.5 * 1e-5**-0.5)   # mean intercept
    assert "ratio^-0.50" in fit.describe()


def test_predictor_reports_each_tasks_own_slope():
    cells = _power_law_cells(-0.5, {"rte": -4.0}, [0.01, 0.001, 0.0001])
    cells += _power_law_cells(-1.0, {"sst2": -5.0}, [0.01, 0.001])
    cells += _power_law_cells(-1.0, {"wic": -5.0}, [0.01])          # one ratio: no slope of its own
    (fit,) = fit_lr_scaling(cells)
    assert fit.task_slopes == pytest.approx({"rte": -0.5, "sst2": -1.0})
    assert fit.describe().endswith("; per task: rte -0.50, sst2 -1.00)")


def test_predictor_per_model_and_method_and_needs_two_ratios():
    cells = _power_law_cells(-1.0, {"rte": -5.0}, [0.01, 0.001])
    cells += aggregate(runs(record(model="opt-13b", ratio=0.01, lr=1e-2, val=0.9, test=0.9),
                            record(model="opt-13b", ratio=0.01, lr=1e-3, val=0.1, test=0.1)))
    fits = {f.model: f for f in fit_lr_scaling(cells)}
    assert fits["opt-125m"].slope == pytest.approx(-1.0)
    assert fits["opt-13b"].slope is None and fits["opt-13b"].predict(0.001) is None
    assert "2 or more ratios" in fits["opt-13b"].describe()


def test_predictor_least_squares_on_noisy_points():
    # best LRs 1e-2 at ratio 1e-2, 1e-1 at 1e-3, 1e-1 at 1e-4: slope by least squares on log10
    rs = []
    for ratio, best in ((1e-2, 1e-2), (1e-3, 1e-1), (1e-4, 1e-1)):
        for lr in (1e-3, 1e-2, 1e-1, 1.0):
            rs.append(record(ratio=ratio, lr=lr, val=0.9 if lr == best else 0.5, test=0.5))
    (fit,) = fit_lr_scaling(aggregate(runs(*rs)))
    xs, ys = [-2, -3, -4], [-2, -1, -1]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    assert fit.slope == pytest.approx(slope) == pytest.approx(-0.5)
    assert fit.predict(1e-5) == pytest.approx(10 ** (my - slope * mx + slope * -5))
    ss_res = sum((y - (my + slope * (x - mx))) ** 2 for x, y in zip(xs, ys, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ys)
    assert fit.r2 == pytest.approx(1 - ss_res / ss_tot) == pytest.approx(0.75)


def test_a_cell_whose_runs_come_from_several_commits_is_flagged():
    rs = [{**record(lr=1e-2, seed=0), "git_commit": "a" * 40}, {**record(lr=1e-1, seed=0), "git_commit": "b" * 40},
          {**record(lr=1e-1, seed=1), "git_commit": "b" * 40},
          {**record(task="sst2", lr=1e-2, seed=0), "git_commit": "a" * 40},
          {**record(task="sst2", lr=1e-1, seed=0, status="failed"), "git_commit": "c" * 40}]   # not a result
    cells = {c.task: c for c in aggregate(runs(*rs))}
    (flag,) = [f for f in cells["rte"].flags if f.kind == "commits"]
    assert flag.message.startswith("runs from 2 rmpeft commits (aaaaaaa: 1, bbbbbbb: 2)")
    assert not [f for f in cells["sst2"].flags if f.kind == "commits"]
