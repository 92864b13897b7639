"""A run interrupted after an epoch continues from it when relaunched, and ends exactly where an
uninterrupted run ends."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import rmpeft.trainer as trainer
from rmpeft import records
from rmpeft.resolve import resolve_run_config
from rmpeft.resume import RESUME_FILE
from tests.helpers import compose_train, interrupt_training_at

RUN = ["trainer.epochs=3", "task.num_train=24", "task.num_val=8", "task.num_test=8", "trainer.batch_size=4",
       "trainer.save_delta=always"]


@pytest.mark.parametrize("method", [["method=masking", "method.ratio=0.01", "method.backend=torch", "method.autotune=false"],
                                    ["method=lora", "method.dropout=0.1", "optim.lr=1e-3"],
                                    ["method=adalora", "optim.lr=1e-3"]])
def test_a_relaunch_resumes_and_equals_an_uninterrupted_run(smoke_overrides, tmp_path, monkeypatch, method):
    overrides = smoke_overrides + RUN + method
    whole = trainer.train(resolve_run_config(compose_train(overrides + [f"results_root={tmp_path / 'whole'}"])))
    real = interrupt_training_at(monkeypatch, 8)   # 6 micro-batches an epoch: in epoch 2
    cfg = resolve_run_config(compose_train(overrides))
    folder = records.run_dir(cfg)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(cfg)
    assert records.read_record(folder)["status"] == "failed" and (folder / RESUME_FILE).is_file()
    monkeypatch.setattr(trainer, "batch_loss", real)
    again = trainer.train(resolve_run_config(compose_train(overrides)))
    assert again["status"] == "finished" and again["resumed_from_epoch"] == 1
    assert [e["epoch"] for e in again["epochs"]] == [1, 2, 3]
    for key in ("test_metric", "val_metric", "best_epoch", "epochs", "distance_from_init", "trainable_params"):
        assert again[key] == whole[key], key
    trained = sorted(p.name for p in (folder / "delta").iterdir() if p.suffix == ".safetensors")
    assert trained
    for name in trained:
        mine, ref = load_file(folder / "delta" / name), load_file(records.run_dir(whole["config"]) / "delta" / name)
        assert mine.keys() == ref.keys()
        for key in ref:
            assert torch.equal(mine[key], ref[key]), (key, (mine[key].float() - ref[key].float()).abs().max())
    assert not (folder / RESUME_FILE).exists()   # removed once the run has a result


def test_force_starts_afresh_and_resume_false_keeps_no_state(smoke_overrides, monkeypatch):
    overrides = smoke_overrides + RUN
    interrupt_training_at(monkeypatch, 8)
    cfg = resolve_run_config(compose_train(overrides + ["trainer.resume=false"]))
    with pytest.raises(KeyboardInterrupt):
        trainer.train(cfg)
    assert not (records.run_dir(cfg) / RESUME_FILE).exists()
    cfg = resolve_run_config(compose_train(overrides))
    assert records.run_dir(cfg) == records.run_dir(resolve_run_config(compose_train(overrides + ["trainer.resume=false"])))
    monkeypatch.undo()
    interrupt_training_at(monkeypatch, 8)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(cfg)   # interrupted in epoch 2 again, this time with its state kept
    assert (records.run_dir(cfg) / RESUME_FILE).is_file()
    monkeypatch.undo()
    forced = trainer.train(resolve_run_config(compose_train(overrides + ["force=true"])))
    assert forced["status"] == "finished" and forced["resumed_from_epoch"] is None


def test_resume_state_is_readable_as_the_umask_allows(tmp_path):
    """A group sharing a results folder relaunches each other's runs: resume.pt is not private."""
    import stat

    from rmpeft.resume import ResumeState, save
    from rmpeft.run_folder import _UMASK

    save(tmp_path, ResumeState("h", 1, 1, [torch.zeros(1)], {}, {}, {}, {}, {}, [], {}))
    assert stat.S_IMODE((tmp_path / RESUME_FILE).stat().st_mode) == 0o666 & ~_UMASK
