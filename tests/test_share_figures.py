"""rmpeft-plot share-curve (Figure 1) and structured-vs-random (Figure 5): what is averaged and drawn."""

from __future__ import annotations

import pytest

from rmpeft.records import run_dir, write_record
from rmpeft.reporting import cli as reporting_cli
from rmpeft.reporting.aggregate import aggregate
from rmpeft.reporting.runs import runs_from_records
from rmpeft.reporting.share_figures import comparison_tasks, share_curve_points

# (method, ratio, share) -> per task (val, test) at the best LR; the other LR is worse on both
SCORES = {
    ("none", None, 0.0): {"sst2": 0.50, "rte": 0.48},
    ("ft", None, 1.0): {"sst2": 0.90, "rte": 0.66},
    ("lora", None, 0.003): {"sst2": 0.88, "rte": 0.62},
    ("masking", 0.001, 0.001): {"sst2": 0.86, "rte": 0.60},
    ("masking", 0.0001, 0.0001): {"sst2": 0.84, "rte": 0.58},
    ("structured_masking", 0.001, 0.001): {"sst2": 0.80, "rte": 0.56},
    ("structured_masking", 0.0001, 0.0001): {"sst2": 0.70},          # not measured on rte
}


def _records(protocol=None):
    out = []
    for (method, ratio, share), by_task in SCORES.items():
        for task, score in by_task.items():
            for lr, delta in ((1e-2, 0.0), (1e-1, -0.2)):
                cfg = {"name": "study", "seed": 1, "model": {"name": "smollm2-135m"}, "task": {"name": task},
                       "method": {"name": method, **({"ratio": ratio} if ratio else {})}, "optim": {"lr": lr},
                       **({"protocol": {"name": protocol}} if protocol else {})}
                out.append({"status": "finished", "config": cfg, "val_metric": score + delta,
                            "test_metric": score + delta, "metric": "accuracy", "trainable_share": share,
                            "trainable_params": 0 if method == "none" else 1})
    return out


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "runs"
    for r in _records():
        write_record(run_dir({**r["config"], "results_root": str(root)}), r)
    return root


def test_share_curve_averages_each_share_over_every_task():
    cells = aggregate(runs_from_records(enumerate(_records())))
    points = share_curve_points(cells)["smollm2-135m"]
    assert points[("masking", 0.001, None)] == pytest.approx((0.1, 100 * (0.86 + 0.60) / 2))
    assert points[("ft", None, None)] == pytest.approx((100.0, 78.0))
    assert points[("none", None, None)] == pytest.approx((0.0, 49.0))
    assert ("structured_masking", 0.0001, None) not in points     # measured on one task of two: not averaged


def test_a_study_under_another_protocol_is_plotted_as_its_own_series(tmp_path):
    cells = aggregate(runs_from_records(enumerate(_records(protocol="paper"))))
    points = share_curve_points(cells)["smollm2-135m"]
    assert points[("masking", 0.001, "protocol=paper")] == pytest.approx((0.1, 100 * (0.86 + 0.60) / 2))
    root = tmp_path / "runs"
    for r in _records(protocol="paper"):
        write_record(run_dir({**r["config"], "results_root": str(root)}), r)
    for figure in ("share-curve", "structured-vs-random"):
        assert reporting_cli.plot_main([figure, str(root), "--out", str(tmp_path / "figs")]) == 0
    assert len(list((tmp_path / "figs").glob("*.png"))) == 2


def test_plot_commands_write_the_figures(results, tmp_path, capsys):
    out = tmp_path / "figs"
    assert reporting_cli.plot_main(["share-curve", str(results), "--out", str(out)]) == 0
    assert reporting_cli.plot_main(["structured-vs-random", str(results), "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["share_curve_smollm2-135m.pdf", "share_curve_smollm2-135m.png",
                     "structured_vs_random_smollm2-135m.pdf", "structured_vs_random_smollm2-135m.png"]
    assert all(p.stat().st_size > 5000 for p in out.iterdir())


def test_structured_vs_random_needs_both_methods(results, tmp_path):
    out = tmp_path / "figs"
    assert reporting_cli.plot_main(["structured-vs-random", str(results), "--method", "masking",
                                    "--out", str(out)]) == 2


def test_structured_vs_random_draws_only_tasks_with_both_methods():
    recs = _records() + [{**r, "config": {**r["config"], "task": {"name": "wic"}}} for r in _records()
                         if r["config"]["method"]["name"] == "masking"]
    cells = aggregate(runs_from_records(enumerate(recs)))
    assert comparison_tasks([c for c in cells if c.method in ("masking", "structured_masking")]) == ["sst2", "rte"]
