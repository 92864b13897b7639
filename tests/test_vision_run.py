"""Vision runs: the Table 2 protocol, the cosine schedule, masking/LoRA on the image encoder's MLP
layers (exact counts), training end to end on the tiny CLIP, Table 2 rendering and its sweep file."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch

from rmpeft.config import compose_config
from rmpeft.errors import RmpeftError
from rmpeft.methods import MethodContext, get_method
from rmpeft.models import build_model_on_meta, count_parameters
from rmpeft.params import count
from rmpeft.params import table as params_table  # noqa: I001 - the Table 2 rows
from rmpeft.records import run_dir, write_record
from rmpeft.reporting import cli as reporting_cli
from rmpeft.run import check_config
from rmpeft.sweeps import cli as sweep_cli
from rmpeft.optim import build_scheduler
from rmpeft.trainer import train
from tests.helpers import REPO

VIT_B16_IMAGE_ENCODER = 86_192_640   # vision tower + visual projection of openai/clip-vit-base-patch16
VIT_B16_MLP_WEIGHTS = 12 * 2 * 768 * 3072
TINY_IMAGE_ENCODER = 115_712


def table2(*overrides: str):
    return compose_config(["experiment=table2", *overrides])


def test_table2_protocol():
    cfg = table2("method=masking", "method.ratio=0.001", "optim.lr=1e-3")
    check_config(cfg)
    assert (cfg.model.name, cfg.task.kind, cfg.model.family) == ("clip-vit-b16", "image_classification", "clip")
    assert (cfg.trainer.batch_size, cfg.trainer.max_steps, cfg.optim.weight_decay) == (128, 2000, 0.1)
    assert (cfg.optim.scheduler, cfg.optim.warmup_steps) == ("cosine", 200)
    assert list(cfg.method.target_modules) == ["fc1", "fc2"]
    assert cfg.task.full_train and cfg.task.num_test is None
    with pytest.raises(RmpeftError, match="optim.scheduler='cosin' is invalid; expected one of constant, linear, cosine"):
        check_config(table2("optim.scheduler=cosin"))


def test_cosine_schedule_warms_up_then_decays_to_zero():
    cfg = table2()
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, cfg.optim, 2000)
    lrs = []
    for _ in range(2001):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and lrs[100] == pytest.approx(0.5) and lrs[200] == pytest.approx(1.0)
    assert lrs[1100] == pytest.approx(0.5) and lrs[2000] == pytest.approx(0.0, abs=1e-12)
    assert lrs[650] == pytest.approx(0.5 * (1 + math.cos(math.pi * 450 / 1800)))
    assert all(a >= b for a, b in zip(lrs[200:], lrs[201:]))  # monotone after the warm-up


@pytest.mark.parametrize("ratio", [0.01, 0.001, 0.0001])
def test_masking_counts_on_the_image_encoder_mlp(ratio):
    cfg = table2("method=masking", f"method.ratio={ratio}")
    row = count(cfg)
    assert row.total == VIT_B16_IMAGE_ENCODER  # the text tower and the head are not counted
    assert row.trainable == math.floor(ratio * VIT_B16_IMAGE_ENCODER + 0.5)
    model = build_model_on_meta(cfg.model)
    handle = get_method("masking").apply(model, cfg.method, MethodContext(total_params=count_parameters(model),
                                                                          device=torch.device("meta")))
    per_module = handle.extra["per_module"]
    assert len(per_module) == 24 and all(q.endswith(("mlp.fc1", "mlp.fc2")) for q in per_module)
    assert all(q.startswith("vision_model.encoder.layers.") for q in per_module)
    assert sum(per_module.values()) == row.trainable and handle.extra["target_params"] == VIT_B16_MLP_WEIGHTS


def test_lora_and_full_fine_tuning_counts():
    lora = count(table2("method=lora"))
    assert lora.trainable == 12 * 2 * 8 * (768 + 3072) and lora.total == VIT_B16_IMAGE_ENCODER
    ft = count(table2("method=ft"))
    assert ft.trainable == ft.total == VIT_B16_IMAGE_ENCODER


def test_params_table2_beside_the_papers_params_column():
    rows = {(r.method, r.ratio): r for r in params_table(vision=True)}
    assert [(r.share_percent, r.paper_params, r.match) for r in rows.values()] == [
        (100.0, "100%", True), (pytest.approx(0.3208, abs=1e-4), "0.3%", True),  # LoRA r=3: see docs/vision.md
        (pytest.approx(1.0, abs=1e-6), "1%", True), (pytest.approx(0.1, abs=1e-5), "0.1%", True),
        (pytest.approx(0.01, abs=1e-5), "0.01%", True)]
    assert rows[("masking", 0.01)].trainable == 861_926 and rows[("lora", None)].trainable == 12 * 2 * 3 * (768 + 3072)


def _smoke(cache_dir, results_root, *overrides: str):
    return compose_config(["experiment=smoke-vision", f"cache_dir={cache_dir}", f"results_root={results_root}",
                           "trainer.progress=false", *overrides])


@pytest.mark.slow
def test_smoke_vision_trains_masking_on_the_mlp_and_learns(cache_dir, results_root):
    rec = train(_smoke(cache_dir, results_root, "trainer.epochs=6"))
    assert rec["status"] == "finished"
    assert rec["total_params"] == TINY_IMAGE_ENCODER
    assert rec["trainable_params"] == math.floor(0.1 * TINY_IMAGE_ENCODER + 0.5)
    assert rec["split_sizes"] == {"train": 1097, "validation": 200, "test": 500}
    assert rec["test_metric"] > 0.25  # 10 classes: chance is 0.1


@pytest.mark.parametrize("method, trainable", [("lora", 2 * 2 * 8 * (64 + 256)), ("ft", TINY_IMAGE_ENCODER)])
def test_lora_and_ft_train_the_image_classifier(cache_dir, results_root, method, trainable):
    rec = train(_smoke(cache_dir, results_root, f"method={method}", "optim.lr=1e-3", "trainer.max_steps=3",
                       "trainer.epochs=1", "task.num_test=64"))
    assert rec["status"] == "finished" and rec["trainable_params"] == trainable
    assert 0.0 <= rec["test_metric"] <= 1.0


def _record(task: str, method: str, lr: float, seed: int, val: float, test: float, ratio: float | None = None) -> dict:
    method_cfg = {"name": method} if ratio is None else {"name": method, "ratio": ratio}
    return {"status": "finished", "error": None, "metric": "accuracy", "val_metric": val, "test_metric": test,
            "config": {"name": "table2", "seed": seed, "model": {"name": "clip-vit-b16"}, "task": {"name": task},
                       "method": method_cfg, "optim": {"lr": lr}},
            "trainable_share": 1.0 if method == "ft" else ratio,
            "epochs": [{"epoch": 1, "train_loss": 0.1, "val_metric": val}]}


def _write_vision_records(root) -> None:
    recs = []
    for task in ("mnist", "cifar10"):
        for seed in (1, 2):
            recs += [_record(task, "ft", 1e-5, seed, 0.97, 0.980 + seed / 1000),
                     _record(task, "ft", 3e-5, seed, 0.95, 0.5),
                     _record(task, "masking", 1e-3, seed, 0.96, 0.970, ratio=0.001),
                     _record(task, "masking", 3e-3, seed, 0.90, 0.5, ratio=0.001)]
    nlp = {**_record("rte", "ft", 1e-5, 1, 0.6, 0.6), "config": {**_record("rte", "ft", 1e-5, 1, 0, 0)["config"],
                                                                  "model": {"name": "opt-125m"}}}
    for r in recs + [nlp]:
        write_record(run_dir({**r["config"], "results_root": str(root)}), r)


def test_table2_rendering_beside_the_paper(tmp_path):
    _write_vision_records(tmp_path)
    out, err = io.StringIO(), io.StringIO()
    assert reporting_cli.run_tables([str(tmp_path), "--table", "vision", "--compare-paper"], stdout=out, stderr=err) == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == "### Table 2: image classification, test accuracy (%) at the best validation LR"
    assert "| Model | Method | Params | CIFAR10 | MNIST | Avg |" in lines  # the paper's column order
    rows = [line for line in lines if line.startswith("| CLIP")]
    # paper (Table 2): FT CIFAR10 98.5, MNIST 99.8; Masking 0.1% CIFAR10 98.3, MNIST 99.6
    assert rows == [
        "| CLIP ViT-B/16 | FT | 100% | 98.2 ± 0.1 (98.5, -0.3)† | 98.2 ± 0.1 (99.8, -1.6)† | 98.15 (99.15, -1.00) |",
        "| CLIP ViT-B/16 | Masking | 0.1% | 97.0 ± 0.0 (98.3, -1.3)† | 97.0 ± 0.0 (99.6, -2.6)† | 97.00 (98.95, -1.95) |",
    ]
    main = io.StringIO()
    assert reporting_cli.run_tables([str(tmp_path), "--table", "main"], stdout=main, stderr=io.StringIO()) == 0
    table1 = [line for line in main.getvalue().splitlines() if line.startswith("|")]
    assert not any("CLIP" in line or "MNIST" in line for line in table1)  # image tasks stay out of Table 1
    assert any(line.startswith("| OPT-125m | FT |") for line in table1)


def test_lr_curves_of_vision_runs(tmp_path):
    _write_vision_records(tmp_path / "runs")
    assert reporting_cli.run_plot(["lr-curves", str(tmp_path / "runs"), "--model", "clip-vit-b16",
                                   "--out", str(tmp_path / "figs")]) == 0
    assert sorted(p.name for p in (tmp_path / "figs").glob("*.png")) == [
        "lr_curves_clip-vit-b16_cifar10.png", "lr_curves_clip-vit-b16_mnist.png"]


def test_table2_sweep_dry_run_counts_the_runs(tmp_path, capsys):
    rc = sweep_cli.main([str(REPO / "sweeps" / "table2.yaml"), "--dry-run", "--json", f"results_root={tmp_path}"])
    counts = json.loads(capsys.readouterr().out)
    assert rc == 0  # a dry run launches nothing and fails nothing
    assert (counts["total"], counts["missing"], counts["launched"]) == (5 * 3 * (2 * 5 + 3 * 5), 375, 0)
