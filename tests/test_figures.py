"""Figure 4 panels: what is plotted (means over seeds, series per method/LR) and the files written."""

from __future__ import annotations

from pathlib import Path

import pytest

from rmpeft.reporting import figures
from rmpeft.errors import RmpeftError


def _record(method="masking", ratio=0.001, lr=1e-2, seed=0, share=1e-5, status="finished", before=None,
            after=None, distance=None, epochs=(), task="sst2", name="default"):
    rec = {
        "status": status,
        "config": {"name": name, "seed": seed, "model": {"name": "opt-125m"}, "task": {"name": task},
                   "method": {"name": method, **({} if ratio is None else {"ratio": ratio})},
                   "optim": {"lr": lr}},
        "trainable_share": share,
        "distance_from_init": distance,
        "epochs": [{"epoch": i + 1, "train_loss": 0.5, "val_metric": v} for i, v in enumerate(epochs)],
    }
    if before is not None or after is not None:
        rec["hessian"] = {}
        if before is not None:
            rec["hessian"]["before"] = {"eigenvalue": before, "converged": True}
        if after is not None:
            rec["hessian"]["after"] = {"eigenvalue": after, "converged": True}
    return rec


PANEL = ("default", "opt-125m", "sst2")


def test_sharpness_panels_average_seeds_and_split_by_lr():
    recs = [
        _record(seed=0, before=10.0, after=4.0),
        _record(seed=1, before=12.0, after=-6.0),          # the norm is |λ|
        _record(seed=0, lr=1e-3, before=10.0, after=8.0),
        _record(method="ft", ratio=None, share=1.0, before=300.0, after=200.0, lr=1e-5),
        _record(seed=2, before=1e6, after=1e6, status="diverged"),   # not finished: ignored
        _record(seed=3),                                    # no Hessian results: ignored
    ]
    panels = figures.sharpness_panels((Path(f"r{i}"), r) for i, r in enumerate(recs))
    series = panels[PANEL]
    assert series["masking before"] == {0.001: [10.0, 12.0, 10.0]}
    assert series["masking after, lr=0.01"] == {0.001: [4.0, 6.0]}
    assert series["masking after, lr=0.001"] == {0.001: [8.0]}
    assert series["ft after, lr=1e-05"] == {100.0: [200.0]}
    assert set(series) == {"masking before", "masking after, lr=0.01", "masking after, lr=0.001",
                           "ft before", "ft after, lr=1e-05"}


def test_sharpness_uses_the_norm_estimate_when_recorded():
    rec = _record(before=-1.0, after=2.0)
    rec["hessian"]["before"]["norm"] = 3.0
    series = figures.sharpness_panels([rec])[PANEL]
    assert series["masking before"] == {0.001: [3.0]} and series["masking after, lr=0.01"] == {0.001: [2.0]}


def test_distance_panels_by_share_and_lr_and_panel():
    recs = [
        _record(ratio=0.001, share=1.00004e-5, distance=3.0),
        _record(ratio=0.001, share=0.99996e-5, seed=1, distance=5.0),    # same ratio, same x
        _record(ratio=0.01, share=1e-4, distance=1.0),
        _record(ratio=0.01, share=1e-4, distance=2.0, task="rte"),
        _record(ratio=0.01, share=1e-4, distance=None),
    ]
    panels = figures.distance_panels(recs)
    assert panels[PANEL] == {"masking, lr=0.01": {0.001: [3.0, 5.0], 0.01: [1.0]}}
    assert panels[("default", "opt-125m", "rte")] == {"masking, lr=0.01": {0.01: [2.0]}}


def test_epoch_panels_test_metric_by_length_and_val_curve_of_longest_runs():
    def run(epochs, test, seed=0, lr=1e-4, name="fig4b", ratio=0.001):
        rec = _record(lr=lr, seed=seed, name=f"{name}-e{len(epochs)}", ratio=ratio, epochs=epochs)
        rec["config"]["trainer"] = {"epochs": len(epochs)}
        rec["test_metric"] = test
        return rec

    recs = [run((0.5, 0.6), 0.5), run((0.5, 0.6), 0.625, seed=1),
            run((0.5, 0.6, 0.7, 0.8), 0.75), run((0.6, 0.7, 0.8, 0.9), 0.85, seed=1),
            run((0.9,), 0.9, ratio=0.01)]
    panels = figures.epoch_panels(recs)
    assert list(panels) == [("", "opt-125m", "sst2")]          # experiments of different lengths pooled
    series = panels[("", "opt-125m", "sst2")]
    assert series["masking r=0.001, lr=0.0001: test"] == {2.0: [50.0, 62.5], 4.0: [75.0, 85.0]}
    assert series["masking r=0.001, lr=0.0001: val per epoch"] == {1.0: [50.0, 60.0], 2.0: [60.0, 70.0],
                                                                  3.0: [70.0, 80.0], 4.0: [80.0, 90.0]}
    assert series["masking r=0.01, lr=0.0001: test"] == {1.0: [90.0]}


@pytest.mark.parametrize("fn,name,recs", [
    (figures.plot_sharpness, "fig4a_sharpness", [_record(before=5.0, after=2.0), _record(ratio=0.01, share=1e-4,
                                                                                    before=9.0, after=3.0)]),
    (figures.plot_distance, "fig4b_distance", [_record(distance=2.0), _record(ratio=0.01, share=1e-4, distance=1.0)]),
    (figures.plot_epochs, "fig4b_epochs", [_record(epochs=(0.5, 0.7)), _record(seed=1, epochs=(0.6, 0.8), ratio=0.01)]),
])
def test_plots_write_png_and_pdf(tmp_path, fn, name, recs):
    paths = fn(recs, tmp_path / "figs")
    assert paths == [tmp_path / "figs" / f"{name}.png", tmp_path / "figs" / f"{name}.pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:5] == b"%PDF-"


@pytest.mark.parametrize("fn,match", [(figures.plot_sharpness, "analysis.hessian=true"),
                                      (figures.plot_distance, "distance_from_init"),
                                      (figures.plot_epochs, "test metric")])
def test_no_usable_records_is_a_one_line_error(tmp_path, fn, match):
    with pytest.raises(RmpeftError, match=match):
        fn([_record(status="failed", before=1.0, distance=1.0, epochs=(0.5,))], tmp_path)


def test_settings_of_one_method_are_separate_series():
    recs = []
    for r, dist in ((8, 1.0), (16, 3.0)):
        rec = _record(method="lora", ratio=None, share=0.01, distance=dist)
        rec["config"]["method"]["r"] = r
        recs.append(rec)
    series = figures.distance_panels(recs)[PANEL]
    assert series == {"lora (r=8), lr=0.01": {1.0: [1.0]}, "lora (r=16), lr=0.01": {1.0: [3.0]}}
    assert set(figures.distance_panels(recs[:1])[PANEL]) == {"lora, lr=0.01"}
