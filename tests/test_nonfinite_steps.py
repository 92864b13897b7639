"""Non-finite steps: `stop` ends the run as diverged; `skip` (protocol=paper) skips them as fp16 dynamic
loss scaling does and stops only where DeepSpeed would."""

from __future__ import annotations

import pytest
import torch

import rmpeft.trainer as trainer
from rmpeft.loss_scaling import OverflowBudget
from tests.helpers import compose_train

FAST = ["trainer.epochs=1", "task.num_train=48", "task.num_val=8", "task.num_test=8", "trainer.batch_size=4"]


def _overflow_on(monkeypatch, steps: set[int]) -> list[int]:
    """Make the training loss NaN on the given (0-based) micro-batches; returns the call log."""
    calls: list[int] = []
    real = trainer.batch_loss

    def loss(run, batch):
        value = real(run, batch)
        calls.append(len(calls))
        return value * torch.tensor(float("nan")) if len(calls) - 1 in steps else value

    monkeypatch.setattr(trainer, "batch_loss", loss)
    return calls


def test_clean_protocol_stops_at_the_first_non_finite_loss(smoke_overrides, monkeypatch):
    _overflow_on(monkeypatch, {3})
    rec = trainer.train(compose_train(smoke_overrides + FAST))
    assert rec["status"] == "diverged" and "step 3" in rec["error"] and rec["skipped_steps"] is None


def test_skip_leaves_weights_and_schedule_untouched_on_skipped_steps(smoke_overrides, monkeypatch):
    calls = _overflow_on(monkeypatch, {2, 5, 6})
    seen: list[list[torch.Tensor]] = []
    real_step = torch.optim.AdamW.step

    def step(self, *a, **k):
        seen.append(len(calls))
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    rec = trainer.train(compose_train(smoke_overrides + FAST + ["trainer.nonfinite_steps=skip"]))
    assert rec["status"] == "finished" and rec["skipped_steps"] == 3
    assert len(calls) == 12 and seen == [1, 2, 4, 5, 8, 9, 10, 11, 12]   # no AdamW update after micro-batch 3, 6, 7
    assert all(torch.isfinite(torch.tensor(e["train_loss"])) for e in rec["epochs"])


def test_skip_diverges_where_fp16_loss_scaling_would(smoke_overrides, monkeypatch):
    _overflow_on(monkeypatch, set(range(4, 48)))
    rec = trainer.train(compose_train(smoke_overrides + FAST + ["task.num_train=96", "trainer.nonfinite_steps=skip"]))
    assert rec["status"] == "diverged" and rec["skipped_steps"] == 18, rec["error"]
    assert "step 21" in rec["error"]


def test_paper_protocol_skips():
    assert compose_train(["protocol=paper"]).trainer.nonfinite_steps == "skip"
    assert compose_train([]).trainer.nonfinite_steps == "stop"


@pytest.mark.parametrize("clean_between,expected_stop", [(0, 18), (999, 18), (1000, 20)])
def test_overflow_budget_follows_deepspeeds_scaler(clean_between, expected_stop):
    """2 + 16 overflows from 2^16 reach the minimum scale; 1000 clean steps double the scale once and
    restore the hysteresis: two more overflows."""
    budget = OverflowBudget()
    overflows = 0
    for _ in range(10):
        overflows += 1
        assert not budget.step(True)
    for _ in range(clean_between):
        assert not budget.step(False)
    while not budget.step(True):
        overflows += 1
    assert overflows + 1 == expected_stop and budget.skipped == expected_stop
