from __future__ import annotations

import json

import pytest

from rmpeft import records
from rmpeft.errors import RmpeftError


def _cfg(**kw):
    base = {"results_root": "R", "name": "exp", "model": {"name": "opt-125m"}, "task": {"name": "rte"},
            "method": {"name": "masking", "ratio": 0.0001}, "optim": {"lr": 1e-2}, "seed": 1}
    base.update(kw)
    return base


def test_run_dir_is_derived_from_config():
    folder = records.run_dir(_cfg())
    assert str(folder.parent) == "R/exp/opt-125m/rte/masking-r0.0001/lr0.01"
    assert folder.name == f"seed1-{records.identity_hash(_cfg())}" and len(folder.name) == len("seed1-") + 10
    ft = _cfg(method={"name": "ft"}, optim={"lr": 1e-5}, seed=0)
    assert str(records.run_dir(ft).parent) == "R/exp/opt-125m/rte/ft/lr1e-05"
    assert str(records.unhashed_run_dir(ft)) == "R/exp/opt-125m/rte/ft/lr1e-05/seed0"
    assert records.run_dir(_cfg(seed=2)) != records.run_dir(_cfg())
    assert records.run_dir(_cfg(method={"name": "masking", "ratio": 0.001})) != records.run_dir(_cfg())


def test_atomic_write_leaves_no_temp_files_and_roundtrips(tmp_path):
    rec = {"status": "finished", "val_metric": 0.5}
    path = records.write_record(tmp_path / "run", rec)
    assert json.loads(path.read_text()) == rec
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["record.json"]
    assert records.read_record(tmp_path / "run") == rec


def test_failed_write_keeps_old_record(tmp_path):
    records.write_record(tmp_path, {"status": "finished"})
    with pytest.raises(TypeError):
        records.write_record(tmp_path, {"status": "running", "bad": object()})
    assert records.read_record(tmp_path) == {"status": "finished"}
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_corrupt_record_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "record.json").write_text('{"status": "fini')
    with pytest.raises(RmpeftError, match=r"corrupt run record .*record.json"):
        records.read_record(tmp_path)
    (tmp_path / "record.json").write_text('{"status": "weird"}')
    with pytest.raises(RmpeftError, match="invalid 'status'"):
        records.read_record(tmp_path)


def test_run_status_and_find_records(tmp_path):
    cfg = _cfg(results_root=str(tmp_path))
    assert records.run_status(cfg) == "missing"
    records.write_record(records.run_dir(cfg), {"status": "diverged"})
    assert records.run_status(cfg) == "diverged"
    found = records.find_records(tmp_path)
    assert len(found) == 1 and found[0][1]["status"] == "diverged"


def test_identity_covers_result_fields_and_ignores_bookkeeping():
    base = _cfg(trainer={"epochs": 5, "max_steps": None, "progress": True, "eval_batch_size": 8})
    lora8 = _cfg(method={"name": "lora", "r": 8})
    lora16 = _cfg(method={"name": "lora", "r": 16})
    assert records.run_dir(lora8) != records.run_dir(lora16)
    for changed in ({"trainer": {**base["trainer"], "epochs": 1}}, {"trainer": {**base["trainer"], "max_steps": 2}},
                    {"model": {"name": "opt-125m", "name_or_path": "/other"}}):
        assert records.identity_hash(_cfg(**{**base, **changed})) != records.identity_hash(base), changed
    for same in ({"trainer": {**base["trainer"], "progress": False, "eval_batch_size": 64}}, {"force": True},
                 {"results_root": "elsewhere"}, {"logger": {"name": "wandb"}}, {"cache_dir": "/x"}):
        assert records.identity_hash(_cfg(**{**base, **same})) == records.identity_hash(base), same
    # LR and seed are part of the run, not of the table cell's setting
    assert records.setting_hash(_cfg(optim={"lr": 1.0}, seed=3)) == records.setting_hash(_cfg())
    assert records.setting_hash(lora8) != records.setting_hash(lora16)


def test_identity_is_the_same_from_a_record_and_from_a_dictconfig(tmp_path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({**_cfg(), "data_seed": "${seed}"})
    rec = records.RunRecord(status="finished", config=OmegaConf.to_container(cfg, resolve=True))
    records.write_record(tmp_path, rec)
    back = records.load_record(tmp_path)
    assert back.identity_hash == records.identity_hash(cfg)
    assert records.run_dir(back.config) == records.run_dir(cfg)


def test_records_are_strict_json_with_reasons_for_nulls(tmp_path):
    rec = records.RunRecord(status="finished", val_metric=float("-inf"),
                            epochs=[{"epoch": 1, "train_loss": float("nan"), "val_metric": 0.5}])
    path = records.write_record(tmp_path, rec)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert data["val_metric"] is None and data["epochs"][0]["train_loss"] is None
    assert data["nulls"] == {"val_metric": "-inf", "epochs.0.train_loss": "nan"}


def test_old_records_with_nan_are_read_as_null(tmp_path):
    (tmp_path / "record.json").write_text('{"status": "finished", "val_metric": NaN}')
    rec = records.read_record(tmp_path)
    assert rec["val_metric"] is None and rec["nulls"] == {"val_metric": "nan"}


def test_record_round_trip_keeps_unknown_keys(tmp_path):
    rec = records.RunRecord.from_dict({"status": "finished", "custom": [1, 2], "config": _cfg()})
    records.write_record(tmp_path, rec)
    back = records.load_record(tmp_path)
    assert back.extra == {"custom": [1, 2]} and back.get("method.ratio") == 0.0001


def test_a_finished_record_without_a_numeric_test_metric_is_never_done(smoke_overrides):
    """Not skipped as done forever: train and sweeps report it with its path; force=true reruns it."""
    from rmpeft.resolve import resolve_run_config
    from rmpeft.sweeps.status import SweepRun, refresh_status
    from rmpeft.trainer import train
    from tests.helpers import compose_train

    fast = smoke_overrides + ["trainer.epochs=1", "task.num_train=16", "task.num_val=8", "task.num_test=8"]
    cfg = resolve_run_config(compose_train(fast))
    folder = records.run_dir(cfg)
    for bad in (None, "0.8", True):
        records.write_record(folder, {"status": "finished", "test_metric": bad})
        with pytest.raises(RmpeftError, match="'finished' without a numeric test_metric"):
            train(resolve_run_config(compose_train(fast)))
        run = SweepRun(("x",), folder)
        refresh_status([run])
        assert run.status == "failed" and run.corrupt and "numeric test_metric" in run.error
    rec = train(resolve_run_config(compose_train(fast + ["force=true"])))
    assert rec["status"] == "finished" and isinstance(rec["test_metric"], float)
