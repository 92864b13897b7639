"""End-to-end runs of the entrypoint on the tiny random OPT and the synthetic task (CPU, offline)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rmpeft import records
from rmpeft.methods.delta_format import open_delta
from rmpeft.errors import RmpeftError
from rmpeft.resolve import resolve_run_config
from rmpeft.trainer import train
from tests.helpers import REPO, compose_train

RECORD_KEYS = {"status", "error", "config", "total_params", "trainable_params", "trainable_share", "epochs",
               "best_epoch", "val_metric", "test_metric", "metric", "wall_s", "peak_mem_bytes", "versions",
               "git_commit", "distance_from_init", "started_at", "finished_at", "method_state"}


def _cli(args: list[str], cwd: Path = REPO, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "rmpeft.train", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_smoke_run_learns_writes_a_complete_record_and_is_skipped_on_relaunch(smoke_overrides):
    cfg = compose_train(smoke_overrides)
    rec = train(cfg)
    assert rec["status"] == "finished", rec["error"]
    assert RECORD_KEYS <= set(rec)
    on_disk = records.read_record(records.run_dir(cfg))
    assert on_disk == json.loads(json.dumps(rec))
    assert [e["epoch"] for e in rec["epochs"]] == list(range(1, cfg.trainer.epochs + 1))
    best = max(rec["epochs"], key=lambda e: e["val_metric"])
    assert rec["val_metric"] == best["val_metric"]
    assert rec["epochs"][rec["best_epoch"] - 1]["val_metric"] == rec["val_metric"]
    assert rec["trainable_params"] == round(cfg.method.ratio * rec["total_params"])
    assert rec["config"]["method"]["ratio"] == cfg.method.ratio and rec["config"]["optim"]["lr"] == cfg.optim.lr
    assert rec["distance_from_init"] > 0
    # The synthetic task is learnable: well above chance (0.5) on held-out examples.
    assert rec["val_metric"] >= 0.8 and rec["test_metric"] >= 0.75, rec["epochs"]

    mtime = (records.run_dir(cfg) / "record.json").stat().st_mtime_ns
    again = train(cfg)
    assert again.get("skipped") and (records.run_dir(cfg) / "record.json").stat().st_mtime_ns == mtime
    forced = train(compose_train(smoke_overrides + ["force=true"]))
    assert not forced.get("skipped") and forced["status"] == "finished"


def test_huge_learning_rate_is_recorded_as_diverged_not_a_crash(smoke_overrides):
    cfg = compose_train(smoke_overrides + ["method=ft", "optim.lr=1e6", "trainer.epochs=2"])
    rec = train(cfg)
    assert rec["status"] == "diverged" and "loss" in rec["error"]
    assert rec["test_metric"] is None
    assert records.run_status(cfg) == "diverged"
    assert train(cfg).get("skipped")  # a diverged run is a result: not rerun


def test_failure_is_recorded_then_raised(smoke_overrides, tmp_path):
    (tmp_path / "RTE").mkdir()    # a folder without the task's files: fails once the run has started
    cfg = compose_train(smoke_overrides + ["task=rte", f"task.data_dir={tmp_path / 'RTE'}"])
    with pytest.raises(Exception):
        train(cfg)
    rec = records.read_record(records.run_dir(cfg))
    assert rec["status"] == "failed" and "missing data file" in rec["error"] and "train.jsonl" in rec["error"]


def test_cli_smoke_writes_a_finished_record(smoke_overrides):
    proc = _cli(smoke_overrides)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = resolve_run_config(compose_train(smoke_overrides))   # the folder the run resolved on this machine
    assert records.run_status(cfg) == "finished"


@pytest.mark.parametrize("arg,needle", [
    ("model=opt-7b", "unknown model 'opt-7b'; valid choices: "),
    ("task=mnli", "unknown task 'mnli'; valid choices:"),
    ("method=dora", "unknown method 'dora'; valid choices:"),
])
def test_unknown_choice_is_one_line(arg, needle, results_root):
    proc = _cli([arg, f"results_root={results_root}"], timeout=60)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], proc.stderr


def test_ratio_out_of_range_is_one_line(smoke_overrides):
    proc = _cli(smoke_overrides + ["method.ratio=0.9"], timeout=120)
    assert proc.returncode == 2
    err = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    assert len(err) == 1 and "0.9" in err[0] and "ratio" in err[0], proc.stderr[-2000:]


@pytest.mark.parametrize("override,field", [
    ("logger.mode=ofline", "logger.mode='ofline'"),
    ("task.data_dir=/nonexistent/SST-2", "task.data_dir='/nonexistent/SST-2'"),
])
def test_bad_logger_or_data_folder_stops_before_any_record(smoke_overrides, override, field):
    """Checked with the config: no `running` record is left behind for a run that never started."""
    cfg = compose_train(smoke_overrides + ["logger=wandb", override])
    with pytest.raises(RmpeftError, match="^" + re.escape(field)):
        train(cfg)
    assert not records.run_dir(cfg).exists()


@pytest.mark.slow
def test_two_process_gloo_run_matches_single_process_accumulation(cache_dir, tmp_path):
    """DDP over 2 CPU processes (gloo) with micro-batch 4 equals 1 process accumulating 2 micro-batches of 4."""
    common = ["experiment=smoke", "method=ft", "optim.lr=1e-3", "trainer.epochs=1", f"cache_dir={cache_dir}",
              "trainer.progress=false", "trainer.save_delta=always", "+model.arch.dropout=0.0",
              "+model.arch.attention_dropout=0.0"]
    single = _cli(common + [f"results_root={tmp_path / 'one'}", "trainer.grad_accum=2"])
    assert single.returncode == 0, single.stderr[-2000:]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(REPO / "scripts" / "accelerate" / "ddp_cpu.yaml"), "-m", "rmpeft.train"]
    multi = subprocess.run(launch + common + [f"results_root={tmp_path / 'two'}"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
    assert multi.returncode == 0, multi.stderr[-3000:]
    (one,) = list((tmp_path / "one").rglob("record.json"))
    (two,) = list((tmp_path / "two").rglob("record.json"))
    r1, r2 = json.loads(one.read_text()), json.loads(two.read_text())
    assert r1["status"] == r2["status"] == "finished"
    assert r2["split_sizes"] == r1["split_sizes"]
    d1, d2 = open_delta(one.parent / "delta").tensors(), open_delta(two.parent / "delta").tensors()
    assert sorted(d1) == sorted(d2)
    w1, w2 = [d1[k] for k in sorted(d1)], [d2[k] for k in sorted(d2)]
    assert r1["distance_from_init"] > 0
    assert r2["distance_from_init"] == pytest.approx(r1["distance_from_init"], rel=1e-3)
    # Adam normalises every entry's step, so an entry whose gradient is near zero turns float-order
    # noise (the two processes reduce in another order) into a visible difference: nearly all entries
    # agree tightly and none is off by more than a few steps.
    a, b = torch.cat([w.flatten() for w in w1]), torch.cat([w.flatten() for w in w2])
    differ = int((~torch.isclose(a, b, rtol=1e-3, atol=1e-4)).sum())
    assert differ <= a.numel() // 1000, f"{differ} of {a.numel()} entries differ"
    assert (a - b).abs().max() < 1e-2
    assert r1["val_metric"] == pytest.approx(r2["val_metric"]) and r1["test_metric"] == pytest.approx(r2["test_metric"])


def test_hessian_option_records_sharpness_before_and_after(smoke_overrides):
    cfg = compose_train(smoke_overrides + ["analysis.hessian=true", "analysis.hessian_iters=30",
                                           "analysis.hessian_batches=2", "trainer.epochs=1"])
    rec = train(cfg)
    assert rec["status"] == "finished", rec["error"]
    for phase in ("before", "after"):
        h = rec["hessian"][phase]
        assert h["eigenvalue"] == h["history"][-1] and h["iterations"] == len(h["history"]) <= 30
    assert rec["hessian"]["before"]["eigenvalue"] != rec["hessian"]["after"]["eigenvalue"]


@pytest.mark.parametrize("task,folder,method", [
    ("squad", "SQuAD", "lora"),       # generation: LM loss on the answer, greedy decoding, token F1
    ("drop", "DROP", "prefix"),       # generation through peft's prefix-tuned model
    ("record", "ReCoRD", "masking"),  # entity candidates, several correct surface forms
    ("copa", "COPA", "adapter"),      # multiple choice
])
def test_every_task_kind_trains_and_is_scored_end_to_end(smoke_overrides, task, folder, method):
    data = REPO / "tests" / "fixtures" / "tasks" / folder
    cfg = compose_train(smoke_overrides + [f"task={task}", f"task.data_dir={data}", f"method={method}",
                                           "task.num_val=1", "trainer.epochs=1", "trainer.batch_size=2", "trainer.grad_accum=1",
                                           "trainer.max_new_tokens=8", "optim.lr=1e-3"])
    rec = train(cfg)
    assert rec["status"] == "finished", rec["error"]
    assert rec["metric"] == ("f1" if task in ("squad", "drop") else "accuracy")
    assert rec["split_sizes"]["validation"] == 1 and rec["split_sizes"]["train"] >= 1
    assert 0.0 <= rec["test_metric"] <= 1.0
    assert rec["epochs"][0]["train_loss"] > 0  # generation tasks: not a one-candidate (zero) loss
