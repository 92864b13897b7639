"""Mixed precision on CPU: trainer.precision=bf16 runs under CPU autocast with fp32 trainable values;
fp16 stays a GPU precision; `auto` stays fp32 on CPU."""

from __future__ import annotations

import logging

import pytest
import torch

from rmpeft import run as run_module
from rmpeft.errors import RmpeftError
from rmpeft.identity import identity_hash
from rmpeft.models import resolve_precision
from rmpeft.run import build_run, make_accelerator
from rmpeft.trainer import train
from tests.helpers import compose_train


def test_bf16_on_cpu_runs_under_autocast(smoke_overrides):
    acc, precision = make_accelerator(compose_train(smoke_overrides + ["trainer.precision=bf16"]))
    assert precision == "bf16" and acc.device.type == "cpu"
    with acc.autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_fp16_on_cpu_is_refused_in_one_line(smoke_overrides):
    with pytest.raises(RmpeftError, match=r"^trainer.precision=fp16 needs a GPU; on CPU use fp32 or bf16$"):
        make_accelerator(compose_train(smoke_overrides + ["trainer.precision=fp16"]))


def test_auto_stays_fp32_on_cpu():
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"


@pytest.mark.parametrize("method", ["masking", "lora", "ft"])
def test_bf16_run_on_cpu_keeps_fp32_trainable_values_and_agrees_with_fp32(smoke_overrides, method):
    common = smoke_overrides + [f"method={method}", "trainer.epochs=2", "trainer.save_delta=never",
                                "optim.lr=1e-3" if method == "ft" else "optim.lr=1e-2"]
    fp32, bf16 = compose_train(common + ["trainer.precision=fp32"]), compose_train(common + ["trainer.precision=bf16"])
    assert identity_hash(fp32) != identity_hash(bf16)   # precision is part of the run identity
    built = build_run(bf16)
    assert built.precision == "bf16"
    assert all(p.dtype == torch.float32 for p in built.handle.trainable_parameters())
    a, b = train(fp32), train(bf16)
    assert a["status"] == b["status"] == "finished", (a["error"], b["error"])
    assert b["config"]["trainer"]["precision"] == "bf16"
    for ea, eb in zip(a["epochs"], b["epochs"]):   # bf16 rounding: close, not equal
        assert eb["train_loss"] == pytest.approx(ea["train_loss"], rel=0.05)
    assert abs(b["test_metric"] - a["test_metric"]) <= 0.1


def test_bf16_on_a_cpu_without_bf16_instructions_says_it_is_slower(smoke_overrides, monkeypatch, caplog):
    monkeypatch.setattr(run_module, "cpu_has_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger=run_module.__name__):
        make_accelerator(compose_train(smoke_overrides + ["trainer.precision=bf16"]))
    assert "without bf16 instructions" in caplog.text and "slower than fp32" in caplog.text


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a GPU")
def test_cuda_requested_without_a_gpu_is_refused_before_any_record(smoke_overrides, tmp_path):
    """Accelerate would fall back to the CPU and the record would say cuda (and bf16): refuse instead."""
    cfg = compose_train(smoke_overrides + ["trainer.device=cuda", f"results_root={tmp_path}"])
    with pytest.raises(RmpeftError, match=r"^trainer.device=cuda but .*no CUDA GPU.*valid choices here: auto, cpu$"):
        make_accelerator(cfg)
    with pytest.raises(RmpeftError, match="trainer.device=cuda"):
        train(cfg)
    assert not list(tmp_path.rglob("record*.json"))
