from __future__ import annotations

from rmpeft import records
from rmpeft.migrate import main, migrate


def _legacy(root, seed, r):
    cfg = {"results_root": str(root), "name": "exp", "model": {"name": "m"}, "task": {"name": "t"},
           "method": {"name": "lora", "r": r}, "optim": {"lr": 0.01}, "seed": seed}
    folder = records.unhashed_run_dir(cfg)
    records.write_record(folder, {"status": "finished", "config": cfg, "test_metric": 0.5})
    (folder / "trainable.pt").write_bytes(b"x")
    return cfg, folder


def test_migrate_moves_legacy_folders_to_their_identity(tmp_path, capsys):
    cfg, old = _legacy(tmp_path, 1, 8)
    assert migrate(tmp_path, apply=False) == 1 and old.exists()          # dry run moves nothing
    assert main([str(tmp_path), "--apply"]) == 0
    new = records.run_dir(cfg)
    assert not old.exists() and (new / "trainable.pt").exists()
    rec = records.load_record(new)
    assert rec.run_dir == str(new) and rec.identity_hash == records.identity_hash(cfg)
    assert records.run_status(cfg) == "finished"                           # a relaunch now finds it
    assert migrate(tmp_path, apply=True) == 0                              # idempotent


def test_migrate_never_overwrites(tmp_path):
    cfg, old = _legacy(tmp_path, 1, 8)
    records.write_record(records.run_dir(cfg), {"status": "running", "config": cfg})
    assert migrate(tmp_path, apply=True, say=lambda s: None) == 0
    assert old.exists() and records.run_status(cfg) == "running"


def test_missing_root_is_a_one_line_error(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_root_that_is_a_file_is_named_as_such(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main([str(afile)]) == 2
    assert f"results folder '{afile}' is a file; expected a folder" in capsys.readouterr().err


def test_a_record_whose_config_is_not_a_mapping_is_reported_and_skipped(tmp_path, capsys):
    cfg, old = _legacy(tmp_path, 1, 8)
    bad = tmp_path / "exp" / "m" / "t" / "lora" / "lr0.01" / "seed2"
    bad.mkdir(parents=True)
    (bad / records.RECORD_FILE).write_text('{"status": "finished", "config": "oops"}')
    assert main([str(tmp_path), "--apply"]) == 0
    out = capsys.readouterr().out
    assert f"skip {bad}: its record's config is not a mapping" in out
    assert not old.exists() and records.run_status(cfg) == "finished" and (bad / records.RECORD_FILE).exists()


def test_migrate_rehomes_folders_named_by_an_older_identity(tmp_path):
    cfg, old = _legacy(tmp_path, 2, 8)
    stale = old.with_name("seed2-0123456789")   # a hash computed under other identity rules
    old.rename(stale)
    assert migrate(tmp_path, apply=True, say=lambda s: None) == 1
    assert records.run_status(cfg) == "finished" and not stale.exists()
    assert migrate(tmp_path, apply=True, say=lambda s: None) == 0
