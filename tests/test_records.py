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
    assert str(records.run_dir(_cfg())) == "R/exp/opt-125m/rte/masking-r0.0001/lr0.01/seed1"
    ft = _cfg(method={"name": "ft"}, optim={"lr": 1e-5}, seed=0)
    assert str(records.run_dir(ft)) == "R/exp/opt-125m/rte/ft/lr1e-05/seed0"
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
