"""optim.lr=auto: the estimators' math, the measurement of a tiny run, the config check, the identity,
the record, leave-one-task-out calibration, the lr_grid=auto:K sweep expansion and the lr-auto table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rmpeft import records
from rmpeft.analysis.lr_quantities import curvature_quantities, gradient_moments, gradient_quantities, preconditioner
from rmpeft.errors import RmpeftError
from rmpeft.lr_auto.calibration import Point, estimator_constant, leave_one_task_out, write_constants
from rmpeft.lr_auto.estimators import ESTIMATORS, get_estimator
from rmpeft.lr_auto.predict import half_decade_grid, predict
from rmpeft.reporting import lr_prediction
from rmpeft.reporting.lr_prediction import Case, judge, prediction_rows, render_prediction_table
from rmpeft.reporting.runs import RunResult
from rmpeft.sweeps.lr_grid import predicted_grid_sweep, split_lr_grid
from rmpeft.sweeps.spec import load_sweep
from rmpeft.validation import validate
from tests.helpers import compose_train

ADAMW = {"name": "adamw", "betas": [0.9, 0.999], "eps": 1e-8}


# --- the quantities on a diagonal quadratic, where every answer is known ---------------------------

def test_quantities_of_a_diagonal_quadratic():
    """L = 0.5 sum(a_i x_i^2): H = diag(a); with Adam's P the preconditioned sharpness is max(a_i / P_i)."""
    a = torch.tensor([4.0, 1.0, 0.25, 9.0])
    g1, g2 = torch.tensor([1.0, -2.0, 0.5, 0.0]), torch.tensor([3.0, -2.0, -0.5, 0.0])
    mean, square = gradient_moments([[g1], [g2]])
    assert torch.equal(mean[0], torch.tensor([2.0, -2.0, 0.0, 0.0]))
    assert torch.equal(square[0], torch.tensor([5.0, 4.0, 0.25, 0.0]))
    p = preconditioner(square, eps=1e-8)
    q = gradient_quantities(mean, p)
    assert q["grad_l1"] == pytest.approx(4.0) and q["grad_l2"] == pytest.approx(math.sqrt(8.0))
    assert q["adam_rate"] == pytest.approx(4 / math.sqrt(5) + 4 / 2)   # sum g^2 / sqrt(v)

    x = [torch.zeros(4)]
    out = curvature_quantities(lambda v: [a * v[0]], x, mean, p, ("sharpness", "precond_sharpness", "adam_curvature"),
                               iters=200, seed=0)
    assert out["sharpness"] == pytest.approx(9.0, rel=1e-4)       # the entry with no gradient still curves
    expected = (a / p[0]).max().item()                              # 9 / 1e-8: Adam's step there is huge
    assert out["precond_sharpness"] == pytest.approx(expected, rel=1e-4)
    d = mean[0] / p[0]
    assert out["adam_curvature"] == pytest.approx(float((d * a * d).sum()), rel=1e-6)


def test_estimators_scale_and_refuse_what_they_cannot_use():
    q = {"grad_l1": 2.0, "adam_rate": 4.0, "sharpness": 8.0, "precond_sharpness": 38.0, "adam_curvature": 2.0}
    scales = {name: est.lr_scale(q) for name, est in ESTIMATORS.items()}
    assert scales == {"first_order": 0.5, "adam_rate": 0.25, "curvature": 0.125, "preconditioned": 1 / 38,
                      "adam_eos": 1 / 38, "quadratic": 2.0}
    # Adam's edge of stability: (2 + 2 beta1) / (1 - beta1) = 38 at beta1 = 0.9, not calibrated
    assert predict(q, "adam_eos", ADAMW)["lr"] == pytest.approx(1.0)
    assert predict(q, "first_order", ADAMW, constant=0.1)["lr"] == pytest.approx(0.05)
    with pytest.raises(RmpeftError, match="'quadratic' has no positive finite estimate"):
        get_estimator("quadratic").lr_scale(q | {"adam_curvature": -1.0})
    with pytest.raises(RmpeftError, match="needs the measured sharpness"):
        get_estimator("curvature").lr_scale({"grad_l1": 1.0})
    with pytest.raises(RmpeftError, match="unknown LR estimator 'magic'; valid choices: adam_eos, adam_rate"):
        get_estimator("magic")


def test_uncalibrated_estimator_says_how_to_calibrate(tmp_path):
    with pytest.raises(RmpeftError, match="no calibrated constant for optimizer 'adamw'.*optim.lr_auto.constant"):
        estimator_constant(get_estimator("curvature"), ADAMW, path=tmp_path / "none.json")
    path = tmp_path / "constants.json"
    write_constants({"adamw": {"curvature": -1.0, "first_order": None}}, {"adamw": {"curvature": 3, "first_order": 0}},
                    "study (3 cells)", path)
    c, source = estimator_constant(get_estimator("curvature"), ADAMW, path=path)
    assert c == pytest.approx(0.1) and "study (3 cells)" in source
    assert "first_order" not in json.loads(path.read_text())["adamw"]


def test_half_decade_grid_is_centred_and_rounded():
    assert half_decade_grid(0.01, 3) == [0.00316, 0.01, 0.0316]
    assert half_decade_grid(0.0123, 1) == [0.0123]
    assert len(half_decade_grid(1.0, 4)) == 4 and half_decade_grid(1.0, 4)[1] == pytest.approx(0.562)


# --- calibration: never on the judged task ----------------------------------------------------------

def _case(task: str, name: str, best_lr: float, grad_l1: float) -> Case:
    grid = [(best_lr / 10, 0.6), (best_lr, 0.9), (best_lr * 10, 0.5)]
    return Case(name=name, model="m", task=task, method="masking", ratio=0.001, optimizer="adamw", best_lr=best_lr,
                best_test=0.9, grid=grid, record="", seed=1, key=name, quantities={"grad_l1": grad_l1})


def test_leave_one_task_out_never_uses_the_judged_task():
    """Task 'odd' has a constant 10^4 times the others': its cells must be predicted from the others only
    (and miss), and the others must not be pulled by it."""
    cases = [_case("a", "a1", 1e-2, 1.0), _case("a", "a2", 1e-3, 10.0), _case("b", "b1", 1e-1, 0.1),
             _case("c", "c1", 1e-1, 0.1), _case("odd", "odd1", 1e2, 1.0)]
    by_case = {j.case: j for j in judge(cases, "first_order", lambda c: ADAMW)}
    assert by_case["odd1"].calibration == "leave-one-task-out" and by_case["odd1"].calibration_cells == 4
    assert by_case["odd1"].predicted == pytest.approx(1e-2) and not by_case["odd1"].hit
    for name in ("a1", "a2", "b1", "c1"):   # c = 1e-2 on every other task: the median ignores 'odd'
        assert by_case[name].hit and by_case[name].log10_error == pytest.approx(0.0, abs=1e-9)
    assert by_case["a1"].calibration_cells == 3      # b1, c1 and odd1, never a2
    # the nearest grid LR and its test metric: 'odd' predicted at 1e-2, its grid is 10, 100, 1000
    assert by_case["odd1"].nearest_lr == 10.0 and by_case["odd1"].test_gap == pytest.approx(0.3)
    points = [Point("a", "a1", -2, 0), Point("b", "b1", 5, 0)]
    assert leave_one_task_out(points, "a") == (5, 1)


def test_one_task_falls_back_to_leave_one_cell_out_and_says_so():
    cases = [_case("a", "a1", 1e-2, 1.0), _case("a", "a2", 1e-3, 10.0)]
    by_case = {j.case: j for j in judge(cases, "first_order", lambda c: ADAMW)}
    assert by_case["a1"].calibration == "leave-one-cell-out" and by_case["a1"].calibration_cells == 1
    alone = judge([_case("a", "a1", 1e-2, 1.0)], "first_order", lambda c: ADAMW)[0]
    assert alone.predicted is None and alone.reason == "no other cell to calibrate on"
    theory = judge([_case("a", "a1", 1e-2, 1.0)], "adam_eos", lambda c: ADAMW)[0]
    assert theory.calibration == "theory" and "precond_sharpness" in theory.reason


# --- config, identity ---------------------------------------------------------------------------------

def test_config_check_names_field_value_and_choices(smoke_overrides):
    validate(compose_train(smoke_overrides + ["optim.lr=auto"]), files=False)
    with pytest.raises(RmpeftError, match=r"^optim\.lr='fast' is invalid; expected a number in \(0, 1e\+06\] or auto$"):
        validate(compose_train(smoke_overrides + ["optim.lr=fast"]), files=False)
    with pytest.raises(RmpeftError, match=r"^optim\.lr_auto\.estimator='magic' is invalid; expected one of first_order, "
                                          r"adam_rate, curvature, preconditioned, adam_eos, quadratic$"):
        validate(compose_train(smoke_overrides + ["optim.lr_auto.estimator=magic"]), files=False)
    with pytest.raises(RmpeftError, match=r"^optim\.lr_auto\.batches=0 is invalid"):
        validate(compose_train(smoke_overrides + ["optim.lr_auto.batches=0"]), files=False)


def test_identity_holds_the_lr_auto_settings_only_when_the_lr_is_auto(smoke_overrides):
    plain = compose_train(smoke_overrides)
    assert "lr_auto" not in records.run_identity(plain)["optim"]
    assert records.identity_hash(plain) == records.identity_hash(compose_train(smoke_overrides + ["optim.lr_auto.batches=7"]))
    auto = compose_train(smoke_overrides + ["optim.lr=auto"])
    assert records.run_identity(auto)["optim"]["lr"] == "auto"
    assert records.run_identity(auto)["optim"]["lr_auto"]["estimator"] == "first_order"
    assert records.identity_hash(auto) != records.identity_hash(compose_train(smoke_overrides + ["optim.lr=auto",
                                                                                                "optim.lr_auto.batches=7"]))
    assert records.run_dir(auto).parent.name == "lrauto"


def test_resolving_an_auto_config_names_the_constant_it_will_use(smoke_overrides):
    """The constant counts as part of an lr=auto run: a recalibration makes a different run, not a reused one."""
    from rmpeft.resolve import resolve_run_config

    eos = resolve_run_config(compose_train(smoke_overrides + ["optim.lr=auto", "optim.lr_auto.estimator=adam_eos"]))
    assert eos.optim.lr_auto.constant == pytest.approx(38.0)
    given = resolve_run_config(compose_train(smoke_overrides + ["optim.lr=auto", "optim.lr_auto.constant=0.5"]))
    assert given.optim.lr_auto.constant == 0.5
    assert resolve_run_config(compose_train(smoke_overrides)).optim.lr_auto.constant is None


# --- a tiny run: measurement, and lr=auto end to end --------------------------------------------------

@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Two built tiny-opt runs (Random Masking at 1% and 0.1% of the weights), before any update."""
    from rmpeft.analysis.lr_measure import build_trained_run

    cache = tmp_path_factory.mktemp("cache")
    base = ["experiment=smoke", f"cache_dir={cache}", f"results_root={cache / 'runs'}", "trainer.progress=false"]
    return {ratio: build_trained_run(compose_train(base + [f"method.ratio={ratio}"])) for ratio in (0.01, 0.001)}


def test_measurement_leaves_the_run_untouched_and_is_deterministic(tiny_runs):
    from rmpeft.analysis.lr_measure import measure

    run = tiny_runs[0.01]
    params = run.handle.trainable_parameters()
    before = [p.detach().clone() for p in params]
    wanted = ("sharpness", "precond_sharpness", "adam_curvature")
    run.model.train()
    first = measure(run, wanted, batches=2, power_iters=3)
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before)) and all(p.grad is None for p in params)
    assert run.model.training                         # measured in eval mode, the mode restored
    second = measure(run, wanted, batches=2, power_iters=3)
    strip = ("seconds",)
    assert {k: v for k, v in first.items() if k not in strip} == {k: v for k, v in second.items() if k not in strip}
    assert first["batches"] == 2 and first["examples"] == 16 and first["num_trainable"] == sum(p.numel() for p in params)
    for key in ("loss", "grad_l1", "grad_l2", "adam_rate", "sharpness", "precond_sharpness"):
        assert math.isfinite(first[key]) and first[key] > 0, key


def test_a_sparser_mask_gets_a_larger_first_order_lr(tiny_runs):
    """Ten times fewer trained entries: a smaller ||g||_1, so the first-order estimator's LR is larger."""
    from rmpeft.analysis.lr_measure import measure

    dense, sparse = (measure(tiny_runs[r], (), batches=2) for r in (0.01, 0.001))
    assert sparse["num_trainable"] < dense["num_trainable"] / 5
    lr = {r: predict(q, "first_order", ADAMW, constant=1.0)["lr"] for r, q in ((0.01, dense), (0.001, sparse))}
    assert lr[0.001] > 2 * lr[0.01]


def test_lr_auto_run_records_its_prediction_and_trains_as_the_numeric_run(smoke_overrides):
    from rmpeft.trainer import train

    short = smoke_overrides + ["trainer.epochs=1", "trainer.max_steps=3", "optim.lr_auto.constant=0.002"]
    auto_cfg = compose_train(short + ["optim.lr=auto"])
    rec = train(auto_cfg)
    assert rec["status"] == "finished", rec["error"]
    assert rec["config"]["optim"]["lr"] == "auto" and "/lrauto/" in rec["run_dir"]
    lr_auto = rec["lr_auto"]
    assert lr_auto["estimator"] == "first_order" and lr_auto["constant_source"] == "optim.lr_auto.constant"
    assert lr_auto["lr"] == pytest.approx(0.002 / lr_auto["quantities"]["grad_l1"])
    assert lr_auto["quantities"]["batches"] == 2 and 0 < lr_auto["seconds"] < rec["wall_s"]
    numeric = train(compose_train(short + [f"optim.lr={lr_auto['lr']!r}"]))
    assert numeric["lr_auto"] is None
    assert numeric["epochs"] == rec["epochs"] and numeric["test_metric"] == rec["test_metric"]


# --- sweeps: lr_grid=auto:K ---------------------------------------------------------------------------

def test_lr_grid_auto_replaces_each_cells_grid(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("fixed: {experiment: smoke}\n"
                    "grids:\n"
                    "  - {method: none, seed: '1,2'}\n"
                    "  - {method: masking, method.ratio: '0.01,0.001', seed: '1,2', optim.lr: '1e-3,1e-2'}\n")
    points, rest = split_lr_grid(["seed=1", "lr_grid=auto:3"])
    assert points == 3 and rest == ["seed=1"]
    asked = []

    def fake_predict(overrides: list[str]) -> float:
        asked.append(overrides)
        if "method=none" in overrides:
            raise RmpeftError("method 'none' trains nothing: there is no learning rate to predict")
        return 0.01 if "method.ratio=0.01" in overrides else 0.1

    said = []
    sweep = predicted_grid_sweep(load_sweep(path), 3, fake_predict, said.append)
    runs = {tuple(r) for r in sweep.runs()}
    lrs = {(dict(o.split("=", 1) for o in r).get("method.ratio"), dict(o.split("=", 1) for o in r)["seed"],
            dict(o.split("=", 1) for o in r).get("optim.lr")) for r in runs}
    assert {x for x in lrs if x[0] == "0.01"} == {("0.01", s, lr) for s in "12" for lr in ("0.00316", "0.01", "0.0316")}
    assert {x for x in lrs if x[0] == "0.001"} == {("0.001", s, lr) for s in "12" for lr in ("0.0316", "0.1", "0.316")}
    assert {x for x in lrs if x[0] is None} == {(None, "1", None), (None, "2", None)}   # zero-shot: untouched
    assert len(runs) == 2 + 2 * 2 * 3
    # one prediction per cell, on its first seed, without the sweep's LR
    assert all("seed=1" in a and not any(o.startswith("optim.lr=") for o in a) for a in asked) and len(asked) == 3
    assert any("predicted lr 0.01 -> 0.00316, 0.01, 0.0316" in line for line in said)
    with pytest.raises(RmpeftError, match=r"^lr_grid='3' is invalid; expected auto:K with K a positive integer"):
        split_lr_grid(["lr_grid=3"])


# --- rmpeft-tables: the lr-auto table -----------------------------------------------------------------

def _run(task: str, lr: float, val: float, test: float, seed: int = 1, auto: bool = False) -> RunResult:
    tree = {"model": {"name": "m"}, "optim": {"name": "adamw"} | ({"lr_auto": {"estimator": "first_order"}} if auto else {})}
    from rmpeft.identity import digest

    return RunResult(source=f"{task}-{lr}-{auto}", experiment="e", model="m", task=task, method="ft", ratio=None,
                     lr=lr, seed=seed, status="finished", val=val, test=test,
                     setting=digest(tree), setting_tree=tree, lr_auto=auto)


def test_lr_auto_table_compares_prediction_and_best(tmp_path):
    runs = [_run("rte", 1e-4, 0.6, 0.60), _run("rte", 1e-3, 0.8, 0.70), _run("rte", 1e-2, 0.5, 0.50),
            _run("rte", 2e-3, 0.0, 0.68, auto=True),            # predicted 2e-3: within half a decade of 1e-3
            _run("sst2", 1e-4, 0.9, 0.90), _run("sst2", 1e-3, 0.7, 0.70)]
    evaluation = {"summaries": [{"estimator": "first_order", "hits": 0}],
                  "judgements": [{"estimator": "first_order", "case": "m SST-2 FT", "predicted": 5e-3,
                                  "calibration": "leave-one-task-out", "nearest_test": 0.7}]}
    rows = {r.name: r for r in prediction_rows(runs, evaluation)}
    assert set(rows) == {"m RTE FT", "m SST-2 FT"}
    rte, sst2 = rows["m RTE FT"], rows["m SST-2 FT"]
    assert (rte.predicted, rte.best_lr, rte.test_at_predicted, rte.hit) == (2e-3, 1e-3, 0.68, True)
    assert rte.source == "lr=auto runs"
    assert (sst2.predicted, sst2.best_lr, sst2.hit, sst2.test_at_predicted) == (5e-3, 1e-4, False, 0.7)
    text = render_prediction_table(list(rows.values()))
    assert "| m RTE FT | 0.002 | 0.001 | 2 | yes | 68.0 | 70.0 | lr=auto runs |" in text
    assert "1/2 cells within half a decade" in text and "mean test gap 11.0 points" in text
    assert render_prediction_table(list(rows.values()), "csv").splitlines()[0].startswith("Cell,Predicted LR")


def test_rmpeft_tables_prints_the_lr_auto_table_from_an_evaluation(tmp_path, capsys):
    from rmpeft.reporting import cli as reporting_cli

    def rec(lr, val, test):
        return {"status": "finished", "config": {"name": "e", "seed": 1, "model": {"name": "m"}, "task": {"name": "rte"},
                                                 "method": {"name": "ft"}, "optim": {"lr": lr}},
                "val_metric": val, "test_metric": test, "metric": "accuracy", "trainable_share": 1.0}

    for r in (rec(1e-4, 0.6, 0.6), rec(1e-3, 0.8, 0.7)):
        records.write_record(records.run_dir({**r["config"], "results_root": str(tmp_path / "runs")}), r)
    evaluation = tmp_path / "eval.json"
    evaluation.write_text(json.dumps({"summaries": [], "judgements": [
        {"estimator": "quadratic", "case": "m RTE FT", "predicted": 1.5e-3, "calibration": "leave-one-task-out",
         "nearest_test": 0.7}]}))
    assert reporting_cli.run_tables([str(tmp_path / "runs"), "--table", "lr-auto", "--lr-auto", str(evaluation),
                                     "--lr-auto-estimator", "quadratic"]) == 0
    out = capsys.readouterr().out
    assert "| m RTE FT | 0.0015 | 0.001 | 1.5 | yes | 70.0 | 70.0 | quadratic, leave-one-task-out |" in out
    assert "Table 1/5" not in out
    with pytest.raises(SystemExit):   # argparse: not an estimator at all
        reporting_cli.run_tables([str(tmp_path / "runs"), "--lr-auto", str(evaluation), "--lr-auto-estimator", "bogus"])
    assert "invalid choice: 'bogus'" in capsys.readouterr().err
    with pytest.raises(RmpeftError, match=r"^--lr-auto-estimator first_order: .* judges only quadratic$"):
        reporting_cli.run_tables([str(tmp_path / "runs"), "--table", "lr-auto", "--lr-auto", str(evaluation),
                                  "--lr-auto-estimator", "first_order"])
    assert reporting_cli.run_tables([str(tmp_path / "runs"), "--table", "lr-auto"]) == 0   # nothing to show: said
    assert "lr-auto table: no optim.lr=auto runs and no --lr-auto evaluation" in capsys.readouterr().err
    with pytest.raises(RmpeftError, match="not an LR-prediction evaluation"):
        lr_prediction.read_evaluation(_write(tmp_path / "bad.json", {"x": 1}))


def _write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_evaluation_measures_each_cell_once_and_judges_it_held_out(tmp_path):
    """Records of two tasks x two ratios: one measurement per cell (the best LR's record), cached; the
    constant of each cell's judgement comes from the other task."""
    root = tmp_path / "runs"

    def rec(task, ratio, lr, val, test):
        return {"status": "finished", "config": {"name": "e", "seed": 1, "model": {"name": "m"}, "task": {"name": task},
                                                 "method": {"name": "masking", "ratio": ratio},
                                                 "optim": {"name": "adamw", "lr": lr, "betas": [0.9, 0.999]}},
                "val_metric": val, "test_metric": test, "metric": "accuracy", "trainable_share": ratio}

    for task in ("rte", "sst2"):
        for ratio, best in ((0.01, 1e-2), (0.001, 1e-1)):
            for lr in (best / 10, best, best * 10):
                r = rec(task, ratio, lr, 0.9 if lr == best else 0.6, 0.8 if lr == best else 0.5)
                records.write_record(records.run_dir({**r["config"], "results_root": str(root)}), r)
    measured = []

    def fake_measure(config, wanted, batches, power_iters):
        measured.append((config["task"]["name"], config["method"]["ratio"], config["optim"]["lr"], tuple(wanted)))
        return {"grad_l1": config["method"]["ratio"] * 100}       # lr = c / grad_l1: 10x the LR at 10x sparser

    cache = tmp_path / "q.json"
    evaluation = lr_prediction.evaluate_results([str(root)], cache, ["first_order"], 2, 3, measure=fake_measure,
                                                say=lambda text: None)
    assert sorted(measured) == [(t, r, lr, ("grad_l1",)) for t in ("rte", "sst2") for r, lr in ((0.001, 0.1), (0.01, 0.01))]
    assert len(json.loads(cache.read_text())) == 4
    summary = evaluation.summaries[0]
    assert (summary.estimator, summary.judged, summary.hits, summary.calibration) == ("first_order", 4, 4,
                                                                                        "leave-one-task-out")
    assert summary.mean_test_gap == pytest.approx(0.0)
    assert all(j.calibration_cells == 2 for j in evaluation.judgements)
    again = lr_prediction.evaluate_results([str(root)], cache, ["first_order"], 2, 3, measure=fake_measure,
                                           say=lambda text: None)
    assert len(measured) == 4 and again.summaries == evaluation.summaries      # read from the cache
    assert "| first_order | leave-one-task-out | 4 | 4/4 (100%) |" in lr_prediction.render(evaluation)


def test_cells_without_a_bracketed_best_lr_are_neither_judged_nor_calibrated_on(tmp_path):
    """A best LR at the edge of its grid is a bound, not a best: such a cell (and one whose grid still has
    runs going) is left out and counted, so an unfinished sweep cannot score or calibrate a predictor."""
    root = tmp_path / "runs"

    def rec(task, ratio, lr, val, status="finished"):
        done = status == "finished"
        return {"status": status, "config": {"name": "e", "seed": 1, "model": {"name": "m"}, "task": {"name": task},
                                             "method": {"name": "masking", "ratio": ratio},
                                             "optim": {"name": "adamw", "lr": lr}},
                "val_metric": val if done else None, "test_metric": val if done else None, "metric": "accuracy",
                "trainable_share": ratio, "heartbeat_at": "2999-01-01T00:00:00+00:00"}

    recs = [rec(t, 0.01, lr, v) for t in ("rte", "sst2") for lr, v in ((1e-3, 0.6), (1e-2, 0.9), (1e-1, 0.5))]
    recs += [rec("wic", 0.01, lr, v) for lr, v in ((1e-3, 0.5), (1e-2, 0.52), (1e-1, 0.5))]   # learned nothing:
    recs += [{**rec("wic", None, 1e-2, 0.55), "config": {**rec("wic", None, 1e-2, 0.55)["config"],   # zero-shot 0.55
                                                           "method": {"name": "none"}}, "trainable_params": 0}]
    recs += [rec("rte", 0.001, 1e-2, 0.6), rec("rte", 0.001, 1e-1, 0.9)]                     # best at the top edge
    recs += [rec("sst2", 0.001, 1e-2, 0.6), rec("sst2", 0.001, 1e-1, 0.9), rec("sst2", 0.001, 1.0, 0.5),
             rec("sst2", 0.001, 3e-1, None, status="running")]                              # grid not finished
    for r in recs:
        records.write_record(records.run_dir({**r["config"], "results_root": str(root)}), r)
    measured, said = [], []

    def fake_measure(config, wanted, batches, power_iters):
        measured.append((config["task"]["name"], config["method"]["ratio"]))
        return {"grad_l1": config["method"]["ratio"] * 100}

    evaluation = lr_prediction.evaluate_results([str(root)], tmp_path / "q.json", ["first_order"], 2, 3,
                                                measure=fake_measure, say=said.append)
    assert sorted(measured) == [("rte", 0.01), ("sst2", 0.01)]
    assert sorted(c.name for c in evaluation.cases) == ["m RTE Masking 1%", "m SST-2 Masking 1%"]
    assert any("3 cells left out" in line and "m RTE Masking 0.1% (edge)" in line
               and "m SST-2 Masking 0.1% (running)" in line
               and "m WiC Masking 1% (no better than zero-shot on validation)" in line for line in said)


def test_rmpeft_plot_lr_prediction_draws_the_judged_cells(tmp_path, capsys):
    from rmpeft.reporting import cli as reporting_cli

    def rec(task, lr, val):
        return {"status": "finished", "config": {"name": "e", "seed": 1, "model": {"name": "m"}, "task": {"name": task},
                                                 "method": {"name": "ft"}, "optim": {"lr": lr}},
                "val_metric": val, "test_metric": val, "metric": "accuracy", "trainable_share": 1.0}

    for r in (rec("rte", 1e-4, 0.6), rec("rte", 1e-3, 0.8), rec("rte", 1e-2, 0.5),
              rec("sst2", 1e-4, 0.9), rec("sst2", 1e-3, 0.7)):
        records.write_record(records.run_dir({**r["config"], "results_root": str(tmp_path / "runs")}), r)
    judgements = [{"estimator": "first_order", "case": f"m {t} FT", "predicted": p, "calibration": "leave-one-task-out",
                   "nearest_test": 0.7} for t, p in (("RTE", 2e-3), ("SST-2", 5e-3))]
    evaluation = _write(tmp_path / "eval.json", {"summaries": [], "judgements": judgements})
    rows = prediction_rows(lr_prediction_runs(tmp_path / "runs"), json.loads(evaluation.read_text()), "first_order")
    assert [(r.task, r.method, r.hit) for r in rows] == [("RTE", "FT", True), ("SST-2", "FT", False)]
    out = tmp_path / "figs"
    assert reporting_cli.plot_main(["lr-prediction", str(tmp_path / "runs"), "--lr-auto", str(evaluation),
                                    "--lr-auto-estimator", "first_order", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["lr_prediction.pdf", "lr_prediction.png"]
    assert (out / "lr_prediction.png").stat().st_size > 5000
    # no prediction for any cell: a one-line error, nothing written
    assert reporting_cli.plot_main(["lr-prediction", str(tmp_path / "runs"), "--out", str(tmp_path / "none")]) == 2
    assert "nothing to plot" in capsys.readouterr().err and not (tmp_path / "none").exists()


def lr_prediction_runs(root: Path) -> list[RunResult]:
    from rmpeft.reporting.runs import runs_from_records
    from rmpeft.reporting.sources import load_records

    return runs_from_records(load_records([str(root)], "disk"))


def test_best_of_three_around_the_prediction_is_chosen_on_validation():
    grid = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]
    val = [0.5, 0.6, 0.8, 0.9, 0.7, 0.4]
    test = [0.50, 0.62, 0.85, 0.80, 0.75, 0.30]
    case = lr_prediction.Case(name="c", model="m", task="rte", method="masking", ratio=0.001, optimizer="adamw",
                              best_lr=3e-2, best_test=0.80, grid=list(zip(grid, test)), record="", seed=1, key="k",
                              grid_val=list(zip(grid, val)))
    # around 0.1: 3e-2, 1e-1, 3e-1 -> best validation at 3e-2, test 0.80
    assert lr_prediction.best_of_nearest(case, 0.1) == ([3e-2, 1e-1, 3e-1], 0.80)
    # around 2e-3: 6.3e-4 -> 1e-3, 2e-3 -> 3e-3, 6.3e-3 -> 1e-2: best validation at 1e-2, test 0.85 (better on
    # test than the best LR)
    assert lr_prediction.best_of_nearest(case, 2e-3) == ([1e-3, 3e-3, 1e-2], 0.85)
    # around 4e-4: 1.3e-4 and 4e-4 have no grid LR within a quarter decade; 1.3e-3 -> 1e-3
    assert lr_prediction.best_of_nearest(case, 4e-4) == ([1e-3], 0.50)
    # a decade above the grid: only its top point is run -> test 0.30
    assert lr_prediction.best_of_nearest(case, 1.0) == ([3e-1], 0.30)
    assert lr_prediction.best_of_nearest(case, 30.0) == ([], None)
    case.quantities = {"grad_l1": 1.0}
    (j,) = lr_prediction.judge([case], "adam_eos", lambda c: {"betas": [0.9, 0.999]})
    assert j.predicted is None and j.three_gap is None       # adam_eos needs curvature quantities: no prediction
    other = lr_prediction.Case(**{**case.__dict__, "name": "d", "task": "sst2"})
    judged = {j.case: j for j in lr_prediction.judge([case, other], "first_order", lambda c: {})}
    # each cell calibrated on the other task's best LR (3e-2 at the same scale): predicted 3e-2 exactly
    assert judged["c"].predicted == pytest.approx(3e-2) and judged["c"].three_lrs == [1e-2, 3e-2, 1e-1]
    assert judged["c"].three_gap == pytest.approx(0.0)
    (summary,) = lr_prediction.summarize(list(judged.values()))
    assert summary.mean_three_gap == pytest.approx(0.0)


def test_a_grid_extended_on_another_task_does_not_unsettle_a_bracketed_best():
    """A grid extended on one task (WiC's FT gained 3e-6) leaves the other tasks' FT cells 'missing' that LR;
    a best bracketed by measured neighbours stays settled, while an LR missing inside a cell's grid (a hole
    a sweep has not filled) still unsettles it."""
    from rmpeft.reporting.aggregate import aggregate

    rs = [_run("sst2", lr, v, v) for lr, v in ((1e-5, 0.6), (3e-5, 0.9), (1e-4, 0.5))]
    rs += [_run("wic", lr, v, v) for lr, v in ((3e-6, 0.5), (1e-5, 0.6), (3e-5, 0.55), (1e-4, 0.5))]
    rs += [_run("rte", lr, v, v) for lr, v in ((3e-6, 0.5), (1e-5, 0.7), (1e-4, 0.6))]     # 3e-5 not run
    cells = {c.task: c for c in aggregate(rs)}
    assert "narrower-grid" in {f.kind for f in cells["sst2"].flags}       # still reported in the tables
    assert lr_prediction.unsettled(cells["sst2"]) is None
    assert lr_prediction.unsettled(cells["wic"]) is None
    assert lr_prediction.unsettled(cells["rte"]) == "missing-lr"
