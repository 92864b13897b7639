"""rmpeft-plot: lr-curves files, and the Figure 4 subcommands."""

from __future__ import annotations

from pathlib import Path

import pytest

from rmpeft.reporting import cli as reporting_cli
from rmpeft.reporting import figures
from rmpeft.records import run_dir, write_record


def record(task, method, lr, seed, val=None, test=None, status="finished", ratio=None, model="opt-125m"):
    method_cfg = {"name": method} if ratio is None else {"name": method, "ratio": ratio}
    return {
        "status": status, "error": None,
        "config": {"name": "default", "seed": seed, "model": {"name": model}, "task": {"name": task},
                   "method": method_cfg, "optim": {"lr": lr}},
        "val_metric": val, "test_metric": test, "metric": "accuracy", "trainable_share": ratio or 1.0,
        "distance_from_init": lr * 10,
    }


@pytest.fixture
def results(tmp_path) -> Path:
    root = tmp_path / "runs"
    recs = []
    for model in ("opt-125m", "opt-1.3b"):
        for ratio in (None, 0.001, 0.0001):
            method = "ft" if ratio is None else "masking"
            for lr in (1e-4, 1e-3, 1e-2, 1e-1):
                for seed in (0, 1):
                    if method == "ft" and lr == 1e-1:
                        recs.append(record("rte", method, lr, seed, status="diverged", ratio=ratio, model=model))
                    else:
                        v = 0.5 + 0.1 * seed + lr
                        recs.append(record("rte", method, lr, seed, v, v, ratio=ratio, model=model))
    recs.append(record("sst2", "masking", 1e-2, 0, 0.9, 0.9, ratio=0.001))
    for r in recs:
        write_record(run_dir({**r["config"], "results_root": str(root)}), r)
    return root


def test_lr_curves_writes_png_and_pdf_per_model_and_task(results, tmp_path, capsys):
    out = tmp_path / "figs"
    assert reporting_cli.plot_main(["lr-curves", str(results), "--out", str(out)]) == 0
    expected = sorted(f"lr_curves_{m}_{t}.{ext}" for m, t in (("opt-125m", "rte"), ("opt-1.3b", "rte"),
                                                             ("opt-125m", "sst2")) for ext in ("png", "pdf"))
    assert sorted(p.name for p in out.iterdir()) == expected
    for p in out.iterdir():
        head = p.read_bytes()[:8]
        assert head.startswith(b"\x89PNG") if p.suffix == ".png" else head.startswith(b"%PDF")
        assert p.stat().st_size > 5000
    assert sorted(Path(line).name for line in capsys.readouterr().out.split()) == expected


def test_lr_curves_lines_and_points(results, tmp_path, monkeypatch):
    """The drawn data: one line per method/ratio, y = mean test metric in % over finished seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    captured = []
    monkeypatch.setattr(plt, "close", lambda fig: captured.append(fig))
    assert reporting_cli.plot_main(["lr-curves", str(results), "--out", str(tmp_path), "--model", "opt-125m", "--task", "rte"]) == 0
    (fig,) = captured
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines() if not ln.get_label().startswith("_")}
    assert set(lines) == {"FT", "Masking 0.1%", "Masking 0.01%"}
    assert list(lines["Masking 0.1%"].get_xdata()) == [1e-4, 1e-3, 1e-2, 1e-1]
    expected = [100 * (0.55 + lr) for lr in (1e-4, 1e-3, 1e-2, 1e-1)]   # mean over seeds 0 and 1
    assert list(lines["Masking 0.1%"].get_ydata()) == pytest.approx(expected)
    assert list(lines["FT"].get_xdata()) == [1e-4, 1e-3, 1e-2]      # the diverged LR is marked, not averaged
    assert ax.get_xscale() == "log" and ax.get_title() == "RTE, OPT-125m"


def test_figure4_subcommands_call_the_figures_module(results, tmp_path, monkeypatch, capsys):
    calls = []

    def plot_distance(records, out_dir):
        calls.append((len(records), out_dir))
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "distance.png"
        path.write_bytes(b"x")
        return [path]

    monkeypatch.setattr(figures, "plot_distance", plot_distance)
    assert reporting_cli.plot_main(["distance", str(results), "--out", str(tmp_path / "f"), "--task", "rte"]) == 0
    assert calls == [(2 * 3 * 4 * 2, tmp_path / "f")]
    assert capsys.readouterr().out.strip() == str(tmp_path / "f" / "distance.png")
    assert reporting_cli.plot_main(["sharpness", str(results)]) == 2
    assert "no finished run record has Hessian results" in capsys.readouterr().err


def test_errors(results, tmp_path, capsys):
    assert reporting_cli.plot_main(["lr-curves", str(results), "--model", "opt-13b"]) == 2
    assert "--model opt-13b matches no record" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        reporting_cli.plot_main(["bogus"])
    assert "invalid choice: 'bogus'" in capsys.readouterr().err


def test_epochs_asks_wandb_for_history(monkeypatch, tmp_path):
    seen = {}

    def fake_load(roots, source=None, api=None, history=False, report=None):
        seen["history"] = history
        return [("wandb:e/p/1", record("rte", "ft", 1e-3, 0, 0.5, 0.5))]

    monkeypatch.setattr(figures, "plot_epochs", lambda records, out_dir: [out_dir / "epochs.png"])
    monkeypatch.setattr("rmpeft.reporting.cli.load_records", fake_load)
    assert reporting_cli.plot_main(["epochs", "--source", "wandb:e/p", "--out", str(tmp_path)]) == 0
    assert seen["history"] is True
