"""A tiny real sweep (tiny-opt on the synthetic task: 2 methods x 2 LRs x 2 seeds) through the trainer,
then rmpeft-tables and rmpeft-plot over its records: every cell is recomputed here from the records."""

from __future__ import annotations

import io
import json
import statistics
import warnings
from pathlib import Path

import pytest

CONF = Path(__file__).resolve().parent.parent / "conf"
GRID = {  # method overrides -> learning rates
    ("method=ft",): (1e-3, 1e-2),
    ("method=masking", "method.ratio=0.01"): (1e-2, 3e-2),
}
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    from hydra import compose, initialize_config_dir

    from rmpeft.trainer import train

    tmp = tmp_path_factory.mktemp("sweep")
    root = tmp / "runs"
    common = [
        "model=tiny-opt", "task=synthetic", "name=tiny-sweep", f"results_root={root}", f"cache_dir={tmp / 'cache'}",
        "trainer.epochs=2", "trainer.device=cpu", "trainer.progress=false", "trainer.max_length=128",
        "trainer.eval_batch_size=32", "task.num_train=16", "task.num_val=16", "task.num_test=16",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"), warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for method, lrs in GRID.items():
            # the masking runs are also mirrored to wandb (offline) to exercise the trainer's logger calls
            logger = ["logger=wandb", "logger.mode=offline", f"logger.dir={tmp / 'wandb'}"]
            if "method=masking" not in method:
                logger = []
            for lr in lrs:
                for seed in SEEDS:
                    overrides = common + list(method) + logger + [f"optim.lr={lr}", f"seed={seed}"]
                    cfg = compose("train", overrides=overrides)
                    assert train(cfg)["status"] in ("finished", "diverged")
    assert not [x for x in w if "wandb logging disabled" in str(x.message)]
    return tmp, root


def tables_json(root: Path) -> list[dict]:
    from rmpeft.reporting import cli

    out = io.StringIO()
    assert cli.run_tables([str(root), "--json"], stdout=out, stderr=io.StringIO()) == 0
    return json.loads(out.getvalue())


def recompute(root: Path) -> dict[tuple, dict]:
    """By hand: read each record.json, mean validation per LR over finished seeds (an LR with a
    diverged seed is not eligible), best = highest mean (ties: the smaller LR), then the test metric's
    mean and sample std at that LR."""
    groups: dict[tuple, dict[float, list[dict]]] = {}
    for path in sorted(root.rglob("record.json")):
        rec = json.loads(path.read_text())
        c = rec["config"]
        key = (c["model"]["name"], c["task"]["name"], c["method"]["name"], c["method"].get("ratio"))
        groups.setdefault(key, {}).setdefault(c["optim"]["lr"], []).append(rec)
    expected = {}
    for key, by_lr in groups.items():
        eligible = {lr: [r for r in rs if r["status"] == "finished"] for lr, rs in by_lr.items()
                    if not any(r["status"] == "diverged" for r in rs)}
        means = {lr: sum(r["val_metric"] for r in rs) / len(rs) for lr, rs in eligible.items() if rs}
        top = max(means.values())
        best = min(lr for lr, m in means.items() if abs(m - top) < 1e-12)
        tests = [r["test_metric"] for r in eligible[best]]
        expected[key] = {"best_lr": best, "val_mean": means[best], "test_mean": sum(tests) / len(tests),
                         "test_std": statistics.stdev(tests) if len(tests) > 1 else None, "n_seeds": len(tests),
                         "edge_of_grid": True}   # a 2-LR grid: the best is always at an edge
    return expected


@pytest.mark.slow
def test_every_table_cell_recomputed_from_the_records(sweep):
    tmp, root = sweep
    assert len(list(root.rglob("record.json"))) == 8
    assert len(list((tmp / "wandb" / "wandb").glob("offline-run-*"))) == 4
    expected = recompute(root)
    cells = tables_json(root)
    assert len(cells) == len(expected) == 2
    for c in cells:
        e = expected[(c["model"], c["task"], c["method"], c["ratio"])]
        assert c["best_lr"] == e["best_lr"] and c["n_seeds"] == e["n_seeds"]
        assert c["edge_of_grid"] is e["edge_of_grid"]
        assert c["val_mean"] == pytest.approx(e["val_mean"]) and c["test_mean"] == pytest.approx(e["test_mean"])
        assert (c["test_std"] is None and e["test_std"] is None) or c["test_std"] == pytest.approx(e["test_std"])

    # the Markdown table prints the same numbers, in %
    from rmpeft.reporting import cli

    out = io.StringIO()
    assert cli.run_tables([str(root), "--table", "main"], stdout=out, stderr=io.StringIO()) == 0
    rows = {line.split(" | ")[1]: line for line in out.getvalue().splitlines() if line.startswith("| tiny-opt")}
    for (_model, _task, method, _ratio), e in expected.items():
        cell = f"{100 * e['test_mean']:.1f}" + ("" if e["test_std"] is None else f" ± {100 * e['test_std']:.1f}")
        label = "FT" if method == "ft" else "Masking"
        assert f"| {cell}†" in rows[label], (cell, rows[label])
        assert f"| {100 * e['test_mean']:.2f} |" in rows[label]       # Avg over the one task


@pytest.mark.slow
def test_lr_curves_of_the_sweep(sweep, tmp_path):
    from rmpeft.reporting import cli

    _, root = sweep
    assert cli.plot_main(["lr-curves", str(root), "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr_curves_tiny-opt_synthetic.pdf",
                                                           "lr_curves_tiny-opt_synthetic.png"]
