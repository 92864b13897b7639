"""rmpeft-tables on hand-written run records: exact tables, paper comparison, JSON, wandb source."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from rmpeft.loggers import summary_from_record
from rmpeft.reporting import cli as reporting_cli
from rmpeft.reporting.paper import PAPER_NUMBERS_DIR, PaperNumbers
from rmpeft.records import run_dir, write_record

SHARED_PAPER = Path("/work/shared/paper")


def record(task, method, lr, seed, val=None, test=None, status="finished", ratio=None, model="opt-125m",
           name="default", share=None):
    method_cfg = {"name": method} if ratio is None else {"name": method, "ratio": ratio}
    return {
        "status": status,
        "error": "loss is nan" if status == "diverged" else None,
        "config": {"name": name, "seed": seed, "model": {"name": model}, "task": {"name": task},
                   "method": method_cfg, "optim": {"lr": lr}},
        "val_metric": val, "test_metric": test, "metric": "accuracy",
        "trainable_share": share if share is not None else (1.0 if method == "ft" else ratio),
        "epochs": [{"epoch": 1, "train_loss": 1.0, "val_metric": val}],
    }


def scenario():
    """Two tasks x {FT, Masking 0.1%} x 3 LRs x 2 seeds, with a diverged run and a missing seed."""
    R = []
    # FT rte: 1e-1 diverged on seed 0 (its seed 1 has the best val, but the LR is unstable) -> 1e-3 (low edge)
    R += [record("rte", "ft", 1e-3, 0, 0.70, 0.65), record("rte", "ft", 1e-3, 1, 0.72, 0.67),
          record("rte", "ft", 1e-2, 0, 0.60, 0.90), record("rte", "ft", 1e-2, 1, 0.60, 0.90),
          record("rte", "ft", 1e-1, 0, status="diverged"), record("rte", "ft", 1e-1, 1, 0.99, 0.99)]
    # FT sst2: middle LR best
    R += [record("sst2", "ft", 1e-3, 0, 0.80, 0.85), record("sst2", "ft", 1e-3, 1, 0.80, 0.87),
          record("sst2", "ft", 1e-2, 0, 0.90, 0.88), record("sst2", "ft", 1e-2, 1, 0.92, 0.90),
          record("sst2", "ft", 1e-1, 0, 0.50, 0.50), record("sst2", "ft", 1e-1, 1, 0.50, 0.50)]
    # Masking 0.1% rte: best at the top of the grid
    m = dict(ratio=0.001)
    R += [record("rte", "masking", 1e-3, 0, 0.50, 0.50, **m), record("rte", "masking", 1e-3, 1, 0.50, 0.50, **m),
          record("rte", "masking", 1e-2, 0, 0.60, 0.60, **m), record("rte", "masking", 1e-2, 1, 0.60, 0.62, **m),
          record("rte", "masking", 1e-1, 0, 0.70, 0.64, **m), record("rte", "masking", 1e-1, 1, 0.70, 0.66, **m)]
    # Masking 0.1% sst2: middle LR best; lr 1e-1 is missing seed 1
    R += [record("sst2", "masking", 1e-3, 0, 0.70, 0.70, **m), record("sst2", "masking", 1e-3, 1, 0.70, 0.70, **m),
          record("sst2", "masking", 1e-2, 0, 0.80, 0.84, **m), record("sst2", "masking", 1e-2, 1, 0.80, 0.86, **m),
          record("sst2", "masking", 1e-1, 0, 0.60, 0.60, **m)]
    return R


def write_all(root: Path, recs) -> Path:
    for r in recs:
        write_record(run_dir({**r["config"], "results_root": str(root)}), r)
    return root


@pytest.fixture
def results(tmp_path) -> Path:
    return write_all(tmp_path / "runs", scenario())


def cli(*argv, api=None) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    assert reporting_cli.run_tables([str(a) for a in argv], api=api, stdout=out, stderr=err) == 0
    return out.getvalue(), err.getvalue()


EXPECTED_MAIN = """\
### Table 1/5: test metric (%) at the best validation LR, mean ± std over seeds

| Model | Method | Params | SST-2 | RTE | Avg |
|---|---|---|---:|---:|---:|
| OPT-125m | FT | 100% | 89.0 ± 1.4 | 66.0 ± 1.4†* | 77.50 |
| OPT-125m | Masking | 0.1% | 85.0 ± 1.4* | 65.0 ± 1.4† | 75.00 |

cells: test metric in % at the LR with the best mean validation metric, mean ± std over seeds; \
† best LR at the edge of its grid; * incomplete (see flags).
"""

EXPECTED_FLAGS = """\
### Flags

- OPT-125m RTE FT: [edge] best lr 0.001 is the smallest of the grid [0.001, 0.01, 0.1]: extend the grid downward
- OPT-125m RTE FT: [diverged] lr 0.1: seed 0 diverged (excluded from best-LR choice)
- OPT-125m SST-2 Masking 0.1%: [missing-seeds] lr 0.1: 1 of 2 seeds (missing seed 1)
- OPT-125m RTE Masking 0.1%: [edge] best lr 0.1 is the largest of the grid [0.001, 0.01, 0.1]: extend the grid upward
"""


def test_main_table_markdown_exact(results):
    out, _ = cli(results, "--table", "main")
    assert out == EXPECTED_MAIN + "\n" + EXPECTED_FLAGS


def test_lr_tables_markdown_exact(results):
    out, _ = cli(results, "--table", "lr-masking", "--table", "lr-baselines")
    assert out.split("### Flags")[0] == """\
### Tables 6/9: best learning rate, masking

| Model | Method | Params | SST-2 | RTE |
|---|---|---|---:|---:|
| OPT-125m | Masking | 0.1% | 0.01* | 0.1† |

cells: learning rate with the best mean validation metric; † best LR at the edge of its grid; * incomplete (see flags).
Fit opt-125m masking: no fit (needs best LRs at 2 or more ratios of one task).

### Table 7: best learning rate, baselines

| Model | Method | Params | SST-2 | RTE |
|---|---|---|---:|---:|
| OPT-125m | FT | 100% | 0.01 | 0.001†* |

cells: learning rate with the best mean validation metric; † best LR at the edge of its grid; * incomplete (see flags).

"""


def test_compare_paper_reads_the_shipped_csvs(results):
    out, _ = cli(results, "--table", "main", "--compare-paper")
    rows = [line for line in out.splitlines() if line.startswith("| OPT-125m")]
    # paper: FT SST-2 88.1, RTE 63.5; Masking 0.1% SST-2 87.3, RTE 60.8 (Table 5)
    assert rows == [
        "| OPT-125m | FT | 100% | 89.0 ± 1.4 (88.1, +0.9) | 66.0 ± 1.4 (63.5, +2.5)†* | 77.50 (75.80, +1.70) |",
        "| OPT-125m | Masking | 0.1% | 85.0 ± 1.4 (87.3, -2.3)* | 65.0 ± 1.4 (60.8, +4.2)† | 75.00 (74.05, +0.95) |",
    ]


def test_csv_layout_matches_the_papers(results):
    out, err = cli(results, "--table", "main", "--format", "csv", "--compare-paper")
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["model", "method", "params", "SST-2", "SST-2_paper", "SST-2_diff", "RTE", "RTE_paper",
                       "RTE_diff", "avg", "avg_paper", "avg_diff"]
    assert rows[1] == ["OPT-125m", "ft", "100%", "89", "88.1", "0.9", "66", "63.5", "2.5", "77.5", "75.8", "1.7"]
    assert rows[2] == ["OPT-125m", "masking", "0.1%", "85", "87.3", "-2.3", "65", "60.8", "4.2", "75", "74.05", "0.95"]
    # flags go to stderr so that the CSV stays clean
    assert "flag: OPT-125m RTE FT: [edge]" in err and "flag:" not in out


def test_json_cells(results):
    out, _ = cli(results, "--json", "--compare-paper")
    cells = {(c["task"], c["method"]): c for c in json.loads(out)}
    assert len(cells) == 4
    c = cells[("rte", "ft")]
    assert (c["model"], c["ratio"], c["best_lr"], c["n_seeds"], c["edge_of_grid"]) == ("opt-125m", None, 0.001, 2, True)
    assert c["val_mean"] == pytest.approx(0.71) and c["test_mean"] == pytest.approx(0.66)
    assert c["test_std"] == pytest.approx(0.0141421356)
    assert c["paper_test"] == pytest.approx(0.635) and c["diff"] == pytest.approx(0.025)
    assert [f["kind"] for f in c["flags"]] == ["edge", "diverged"]
    m = cells[("sst2", "masking")]
    assert (m["ratio"], m["best_lr"], m["edge_of_grid"], m["test_mean"]) == (0.001, 0.01, False, pytest.approx(0.85))


def test_every_cell_recomputed_from_the_records(results):
    """Independently of rmpeft.reporting.aggregate: mean val per LR over finished seeds, LRs with a diverged seed
    skipped, argmax, then mean test there."""
    recs = scenario()
    cells = json.loads(cli(results, "--json")[0])
    for c in cells:
        mine = [r for r in recs if r["config"]["task"]["name"] == c["task"]
                and r["config"]["method"]["name"] == c["method"]]
        lrs = sorted({r["config"]["optim"]["lr"] for r in mine})
        ok = [lr for lr in lrs if not any(r["status"] == "diverged" and r["config"]["optim"]["lr"] == lr for r in mine)]

        def fin(lr, mine=mine):
            return [r for r in mine if r["config"]["optim"]["lr"] == lr and r["status"] == "finished"]

        best = max(ok, key=lambda lr: sum(r["val_metric"] for r in fin(lr)) / len(fin(lr)))
        assert c["best_lr"] == best
        assert c["test_mean"] == pytest.approx(sum(r["test_metric"] for r in fin(best)) / len(fin(best)))


def test_latex_output(results):
    out, _ = cli(results, "--table", "main", "--format", "latex")
    assert r"\begin{tabular}{lllrrr}" in out and r"\toprule" in out and r"\bottomrule" in out
    assert r"OPT-125m & FT & 100\% & 89.0$\pm$1.4 & 66.0$\pm$1.4$^\dagger$* & 77.50 \\" in out
    assert "% cells: test metric in %" in out


def test_structured_table_is_separate(tmp_path):
    recs = [record("cb", "structured_masking", lr, 0, v, v, ratio=0.05)
            for lr, v in ((1e-3, 0.8), (1e-2, 0.9), (1e-1, 0.7))]
    recs += [record("cb", "masking", 1e-2, 0, 0.6, 0.6, ratio=0.05)]
    root = write_all(tmp_path / "runs", recs)
    out, _ = cli(root, "--table", "structured", "--compare-paper")
    assert "Table 8" in out
    # paper Table 8: OPT-125m structured 5% CB = 84.5
    assert "| OPT-125m | Masking(S) | 5% | 90.0 (84.5, +5.5) | 90.00 (84.50, +5.50) |" in out
    assert "| OPT-125m | Masking |" not in out
    main_out, _ = cli(root, "--table", "main")
    assert "Masking(S)" not in main_out and "| OPT-125m | Masking | 5% | 60.0" in main_out


def test_all_eleven_tasks_use_the_papers_columns_and_avg(tmp_path):
    tasks = ["sst2", "rte", "wsc", "wic", "cb", "boolq", "multirc", "copa", "record", "squad", "drop"]
    recs = [record(t, "ft", 1e-5, 0, 0.5, 0.5) for t in reversed(tasks)]
    out, _ = cli(write_all(tmp_path / "runs", recs), "--format", "csv", "--table", "main")
    paper_header = (PAPER_NUMBERS_DIR / "table5_main.csv").read_text().splitlines()[0]
    assert out.splitlines()[0] == paper_header
    # with all 11 tasks, the paper's own Avg (62.36 for OPT-125m FT) is the comparison
    out, _ = cli(tmp_path / "runs", "--table", "main", "--compare-paper")
    assert "50.00 (62.36, -12.36)" in out


def test_avg_needs_every_task_of_the_row(tmp_path):
    recs = [record("rte", "ft", 1e-5, 0, 0.5, 0.5), record("sst2", "ft", 1e-5, 0, 0.5, 0.5),
            record("rte", "masking", 1e-2, 0, 0.7, 0.7, ratio=0.01)]
    out, _ = cli(write_all(tmp_path / "runs", recs), "--table", "main")
    assert "| OPT-125m | Masking | 1% |  | 70.0† |  |" in out
    assert "| OPT-125m | FT | 100% | 50.0† | 50.0† | 50.00 |" in out


def test_predictor_rows_in_the_lr_table(tmp_path):
    # best LR = 1e-5 * ratio^-1 on rte: 1e-3 at 1%, 1e-2 at 0.1% (each bracketed by its grid)
    recs = []
    for ratio, best in ((0.01, 1e-3), (0.001, 1e-2)):
        for lr in (best / 10, best, best * 10):
            recs.append(record("rte", "masking", lr, 0, 0.9 if lr == best else 0.5, 0.5, ratio=ratio))
    root = write_all(tmp_path / "runs", recs)
    out, _ = cli(root, "--table", "lr-masking", "--predict-ratio", "0.01%")
    assert "| OPT-125m | Masking | 0.01% (pred.) | ~0.1 |" in out
    assert "Fit opt-125m masking: best lr ~ ratio^-1.00 (2 points over 2 ratios and 1 tasks, 0 at a grid edge" in out
    assert "Predicted best lr for OPT-125m Masking at 0.01%: 0.1 (tasks' mean)" in out
    # default: the paper's ratios not yet swept (7 of 9)
    out, _ = cli(root, "--table", "lr-masking")
    assert out.count("(pred.)") == 7 and "| 1% (pred.)" not in out and "| 10% (pred.) | ~0.0001 |" in out
    rows = list(csv.reader(io.StringIO(cli(root, "--table", "lr-masking", "--format", "csv",
                                            "--predict-ratio", "0.0001")[0])))
    assert ["OPT-125m", "masking", "0.01% (pred.)", "0.1"] in rows
    assert ["OPT-125m", "masking", "1%", "0.001"] in rows


def test_filters_and_out_folder(results, tmp_path):
    out, _ = cli(results, "--json", "--task", "rte", "--method", "masking")
    assert [(c["task"], c["method"]) for c in json.loads(out)] == [("rte", "masking")]
    dest = tmp_path / "tables"
    cli(results, "--out", dest, "--compare-paper")
    names = sorted(p.name for p in dest.iterdir())
    assert names == sorted([f"{t}.{s}" for t in ("main", "lr-masking", "lr-baselines") for s in ("md", "tex", "csv")]
                           + ["cells.json", "flags.txt"])
    assert (dest / "flags.txt").read_text() == "".join(
        line[2:] + "\n" for line in EXPECTED_FLAGS.splitlines() if line.startswith("- "))
    assert len(json.loads((dest / "cells.json").read_text())) == 4


def test_errors_are_one_line(tmp_path, capsys):
    assert reporting_cli.tables_main([str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == f"rmpeft-tables: error: results folder not found: {tmp_path / 'nope'}\n"
    (tmp_path / "empty").mkdir()
    assert reporting_cli.tables_main([str(tmp_path / "empty")]) == 2
    assert "no run records match" in capsys.readouterr().err
    assert reporting_cli.tables_main([str(tmp_path), "--source", "s3:x"]) == 2
    assert "unknown source 's3:x'" in capsys.readouterr().err
    assert reporting_cli.tables_main([str(tmp_path), "--source", "wandb:no-project"]) == 2
    assert "bad wandb source 'no-project'; expected ENTITY/PROJECT" in capsys.readouterr().err
    write_all(tmp_path / "runs", [record("rte", "ft", 1e-5, 0, 0.5, 0.5)])
    assert reporting_cli.tables_main([str(tmp_path / "runs"), "--predict-ratio", "2"]) == 2
    assert "bad ratio '2'" in capsys.readouterr().err


# -- the wandb source, through a fake API object ---------------------------------------------------


class FakeRun:
    def __init__(self, rec, i, dotted=False, state="finished"):
        cfg = rec["config"]
        if dotted:  # some exports flatten the config to dotted keys
            cfg = {"name": cfg["name"], "seed": cfg["seed"], "model.name": cfg["model"]["name"],
                   "task.name": cfg["task"]["name"], "method": cfg["method"], "optim.lr": cfg["optim"]["lr"]}
        self.id, self.state, self.config = f"run{i}", state, cfg
        self.summary_metrics = {**summary_from_record(rec), "_runtime": 3.0, "_step": 1, "epoch": 1,
                                "val/metric": 0.1}
        self.created_at = f"2024-01-01T00:00:{i:02d}"


class FakeApi:
    def __init__(self, runs):
        self._runs, self.paths = runs, []

    def runs(self, path, filters=None):
        self.paths.append(path)
        return iter(self._runs)


def test_wandb_source_gives_the_same_tables(results):
    recs = scenario()
    api = FakeApi([FakeRun(r, i, dotted=i % 2 == 1) for i, r in enumerate(recs)])
    disk, _ = cli(results)
    remote, _ = cli("--source", "wandb:team/rmpeft", api=api)
    assert api.paths == ["team/rmpeft"]
    assert remote == disk


def test_wandb_runs_without_summary_are_failed_or_running(results):
    recs = scenario()
    fakes = [FakeRun(r, i) for i, r in enumerate(recs)]
    crashed = FakeRun(record("sst2", "ft", 1e-3, 2, 0.99, 0.99), 99, state="crashed")
    crashed.summary_metrics = {"_runtime": 1.0}
    live = FakeRun(record("sst2", "ft", 1e-2, 2, 0.99, 0.99), 98, state="running")
    live.summary_metrics = {}
    out, _ = cli("--source", "wandb:team/rmpeft", "--json", api=FakeApi(fakes + [crashed, live]))
    c = next(c for c in json.loads(out) if (c["task"], c["method"]) == ("sst2", "ft"))
    assert c["best_lr"] == 0.01 and c["n_seeds"] == 2
    msgs = [f["message"] for f in c["flags"]]
    assert "lr 0.001: seed 2 failed" in msgs and "lr 0.01: seed 2 still running" in msgs


def test_shipped_paper_csvs():
    paper = PaperNumbers.load()
    assert paper.lookup("opt-13b", "masking", 0.00001).values["squad"] == 86.0
    assert paper.lookup("opt-1.3b", "structured_masking", 0.05).values["cb"] == 89.3
    assert paper.lookup("opt-125m", "bitfit", None).values["wsc"] == 63.5
    assert paper.lookup("opt-125m", "lora", None).avg == 62.04
    assert paper.lookup("opt-125m", "masking", 0.02) is None
    assert paper.lookup("tiny-opt", "ft", None) is None
    if not SHARED_PAPER.exists():
        pytest.skip("the paper's folder is not on this machine")
    for src in sorted(SHARED_PAPER.glob("*.csv")):
        assert (PAPER_NUMBERS_DIR / src.name).read_bytes() == src.read_bytes()


# -- run identity: different settings of one method are different rows ------------------------------


def lora(task, r, lr, seed, v):
    rec = record(task, "lora", lr, seed, v, v)
    rec["config"]["method"] = {"name": "lora", "r": r, "alpha": 16}
    return rec


def test_lora_r8_and_r16_are_never_averaged_together(tmp_path):
    recs = [lora(t, 8, lr, s, 0.6 + lr) for t in ("rte", "sst2") for lr in (1e-4, 1e-3) for s in (0, 1)]
    recs += [lora(t, 16, lr, s, 0.8 + lr) for t in ("rte", "sst2") for lr in (1e-4, 1e-3) for s in (0, 1)]
    root = write_all(tmp_path / "runs", recs)
    cells = json.loads(cli(root, "--json")[0])
    assert len(cells) == 4 and len({c["setting"] for c in cells}) == 4
    by = {(c["task"], c["variant"]): c for c in cells}
    assert by[("rte", "r=8")]["test_mean"] == pytest.approx(0.601)       # never (0.601 + 0.801) / 2
    assert by[("rte", "r=16")]["test_mean"] == pytest.approx(0.801)
    assert all(c["n_seeds"] == 2 for c in cells)
    assert all("mixed" in [f["kind"] for f in c["flags"]] for c in cells)
    out, _ = cli(root, "--table", "main")
    assert "| OPT-125m | LoRA (r=16) |  | 80.1 ± 0.0† | 80.1 ± 0.0† | 80.10 |" in out
    assert "| OPT-125m | LoRA (r=8) |  | 60.1 ± 0.0† | 60.1 ± 0.0† | 60.10 |" in out
    assert "- OPT-125m RTE LoRA (r=8): [mixed] runs of this method with different settings (differing in " \
           "method.r): shown as separate rows, never averaged" in out


def test_one_setting_keeps_the_plain_row_label(tmp_path):
    root = write_all(tmp_path / "runs", [lora("rte", 8, 1e-3, s, 0.7) for s in (0, 1)])
    out, _ = cli(root, "--table", "main")
    assert "| OPT-125m | LoRA |" in out and "mixed" not in out and "(r=8)" not in out


def test_records_in_the_layout_before_run_identity_are_read(tmp_path):
    """Folders without the identity hash, records without an identity key."""
    from rmpeft.records import unhashed_run_dir

    root = tmp_path / "runs"
    for r in scenario():
        write_record(unhashed_run_dir({**r["config"], "results_root": str(root)}), r)
    assert not any(k.startswith("identity") for p in root.rglob("record.json") for k in json.loads(p.read_text()))
    out, _ = cli(root, "--table", "main")
    assert out == EXPECTED_MAIN + "\n" + EXPECTED_FLAGS


def test_a_corrupt_record_is_reported_and_the_others_are_tabled(results, capsys):
    bad = next(results.rglob("record.json"))
    bad.write_text('{"status": "finished", "test_metric": 0.')
    assert reporting_cli.tables_main([str(results), "--table", "main"]) == 0
    out = capsys.readouterr()
    assert f"corrupt run record {bad}" in out.err and "skipped" in out.err
    assert "| OPT-125m | FT |" in out.out


@pytest.mark.parametrize("metrics", [{"test_metric": None}, {"val_metric": "0.7"}, {"test_metric": True}],
                         ids=["missing", "string", "bool"])
def test_a_finished_record_without_numeric_metrics_is_reported_as_invalid(tmp_path, capsys, metrics):
    good = record("rte", "ft", 1e-3, 0, 0.7, 0.65)
    invalid = {**record("rte", "ft", 1e-3, 1, 0.7, 0.65), **metrics}
    root = write_all(tmp_path / "runs", [good, invalid])
    path = run_dir({**invalid["config"], "results_root": str(root)}) / "record.json"
    assert reporting_cli.tables_main([str(root), "--json"]) == 0
    out = capsys.readouterr()
    err = [line for line in out.err.splitlines() if line.strip()]
    assert len(err) == 1 and f"invalid run record {path}" in err[0] and "skipped" in err[0], err
    (cell,) = json.loads(out.out)
    assert cell["n_seeds"] == 1 and all(f["kind"] != "failed" for f in cell["flags"])
    assert all(not lr["failed"] for lr in cell["lrs"])


def test_compute_table_sums_the_wall_time_of_done_runs(tmp_path):
    recs = [{**record("rte", "ft", 1e-3, 0, 0.7, 0.6), "wall_s": 1800.0},
            {**record("rte", "ft", 1e-2, 0, 0.7, 0.6), "wall_s": 3600.0},
            {**record("sst2", "ft", 1e-3, 0, status="diverged"), "wall_s": 360.0},
            {**record("sst2", "ft", 1e-2, 0, status="failed"), "wall_s": 9999.0},        # not counted
            {**record("sst2", "masking", 1e-2, 0, 0.8, 0.8, ratio=0.001), "wall_s": 720.0},
            record("sst2", "masking", 1e-1, 0, 0.8, 0.8, ratio=0.001)]                  # no wall time
    out, _ = cli(write_all(tmp_path / "runs", recs), "--table", "compute")
    assert out.splitlines()[2:7] == [
        "| Model | Method | SST-2 | RTE | Total |",
        "|---|---|---:|---:|---:|",
        "| OPT-125m | FT | 0.10 (1) | 1.50 (2) | 1.60 (3) |",
        "| OPT-125m | Masking 0.1% | 0.20 (1) |  | 0.20 (1) |",
        "|  | Total | 0.30 (2) | 1.50 (2) | 1.80 (4) |",
    ]
    assert "Flags" not in out and "Table 1/5" not in out    # only the table named
    csv_out, _ = cli(tmp_path / "runs", "--table", "compute", "--format", "csv")
    assert list(csv.reader(io.StringIO(csv_out)))[-1] == ["", "Total", "0.30 (2)", "1.50 (2)", "1.80 (4)"]
