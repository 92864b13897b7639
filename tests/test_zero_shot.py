"""method=none: zero-shot evaluation in a normal record, and its "Zero-shot" row and reference line."""

from __future__ import annotations

import matplotlib.axes
import pytest
import torch

from rmpeft import trainer
from rmpeft.errors import RmpeftError
from rmpeft.evaluation import evaluate
from rmpeft.methods import MethodHandle, get_method
from rmpeft.reporting.aggregate import aggregate
from rmpeft.reporting.lr_curves import plot_lr_curves
from rmpeft.reporting.render import render_markdown
from rmpeft.reporting.runs import runs_from_records
from rmpeft.reporting.tables import build_tables
from rmpeft.run import build_run
from tests.helpers import compose_train


def test_a_zero_shot_run_evaluates_the_untouched_model(smoke_overrides, monkeypatch):
    cfg = compose_train([*smoke_overrides, "method=none"])
    run = build_run(cfg)
    assert not run.trains and run.handle.num_trainable() == 0
    before = {n: p.detach().clone() for n, p in run.model.named_parameters()}
    expected = (evaluate(run, run.splits["validation"]), evaluate(run, run.splits["test"]))

    def no_optimizer(*_args):
        raise AssertionError("a zero-shot run built an optimizer")

    monkeypatch.setattr(trainer, "build_optimizer", no_optimizer)
    seen = []
    monkeypatch.setattr(trainer, "build_run", lambda c, acc: seen.append(build_run(c, acc)) or seen[-1])
    rec = trainer.train(cfg)
    assert rec["status"] == "finished", rec["error"]
    assert (rec["val_metric"], rec["test_metric"]) == expected
    assert rec["trainable_params"] == 0 and rec["trainable_share"] == 0
    assert rec["epochs"] == [] and rec["best_epoch"] is None and rec["delta"] is None
    assert rec["method_state"] == {"zero_shot": True}
    for n, p in seen[0].model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_a_training_method_that_leaves_nothing_trainable_is_refused(smoke_overrides, monkeypatch):
    method = get_method("lora")
    monkeypatch.setattr(type(method), "apply", lambda self, model, cfg, ctx: MethodHandle(
        model=model.requires_grad_(False), name="lora"))
    with pytest.raises(RmpeftError, match="method 'lora' left no trainable parameters"):
        build_run(compose_train([*smoke_overrides, "method=lora"]))


def _record(method: str, lr: float, val: float, test: float, seed: int = 0, ratio: float | None = None,
            trainable: int = 10) -> dict:
    cfg = {"name": "x", "seed": seed, "model": {"name": "smollm2-135m"}, "task": {"name": "sst2"},
           "method": {"name": method} | ({} if ratio is None else {"ratio": ratio}), "optim": {"lr": lr}}
    return {"status": "finished", "config": cfg, "val_metric": val, "test_metric": test, "metric": "accuracy",
            "trainable_params": trainable, "trainable_share": trainable / 1000}


def _cells():
    recs = [_record("none", 1e-2, 0.55, 0.52, trainable=0), _record("none", 1e-3, 0.55, 0.52, trainable=0)]
    recs += [_record("ft", lr, v, v) for lr, v in ((1e-5, 0.80), (1e-4, 0.90), (1e-3, 0.70))]
    recs += [_record("masking", lr, v, v, ratio=0.001, trainable=1) for lr, v in ((1e-3, 0.6), (1e-2, 0.9), (1e-1, 0.8))]
    return aggregate(runs_from_records((str(i), r) for i, r in enumerate(recs)))


def test_zero_shot_is_a_row_without_learning_rate_selection():
    cells = _cells()
    (zs,) = [c for c in cells if c.zero_shot]
    assert zs.method == "none" and zs.best_lr is None and zs.grid == [] and not zs.edge_of_grid
    assert (zs.val_mean, zs.test_mean) == (0.55, 0.52) and zs.flags == []
    assert not any(c.zero_shot for c in cells if c.method != "none")

    tables = {t.name: t for t in build_tables(cells, ["main", "lr-baselines"])}
    main = render_markdown(tables["main"], None)
    assert "| SmolLM2-135M | Zero-shot | 0 | 52.0 | 52.00 |" in main
    assert main.index("Zero-shot |") < main.index("| FT |")
    assert "Zero-shot: the model untrained (no LR)" in main
    lr = render_markdown(tables["lr-baselines"], None)
    assert "Zero-shot" not in lr and "| FT |" in lr


def test_lr_curves_draw_zero_shot_as_a_horizontal_line(tmp_path, monkeypatch):
    levels = []
    original = matplotlib.axes.Axes.axhline

    def spy(self, y=0, *args, **kwargs):
        levels.append((y, kwargs.get("label")))
        return original(self, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "axhline", spy)
    written = plot_lr_curves(_cells(), tmp_path, formats=("png",))
    assert [p.name for p in written] == ["lr_curves_smollm2-135m_sst2.png"]
    assert levels == [(pytest.approx(52.0), "Zero-shot")]


def test_zero_shot_is_known_from_the_method_not_the_trainable_count():
    failed = _record("none", 1e-3, 0.5, 0.5) | {"status": "failed", "trainable_params": None, "val_metric": None,
                                                 "test_metric": None}
    trained_nothing = _record("masking", 1e-3, 0.5, 0.5, ratio=0.001, trainable=0)
    plugin = _record("my-plugin-method", 1e-3, 0.5, 0.5, trainable=0)
    runs = runs_from_records([("a", failed), ("b", trained_nothing), ("c", plugin)])
    assert [r.zero_shot for r in runs] == [True, False, True]
