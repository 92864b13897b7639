"""A run folder is claimed by one live run, a forced rerun never costs the old result, folder names
never leave the results folder, and what is written there is readable as the umask allows."""

from __future__ import annotations

import json
import os
import socket
import stat
import time

import pytest
import rmpeft.trainer as trainer
from rmpeft import records
from rmpeft.errors import RmpeftError
from rmpeft.resolve import resolve_run_config
from rmpeft.run_folder import LOCK_FILE, RunLock
from tests.helpers import compose_train, interrupt_training_at

FAST = ["trainer.epochs=1", "task.num_train=16", "task.num_val=8", "task.num_test=8", "trainer.save_delta=always"]


def _cfg(overrides):
    return resolve_run_config(compose_train(overrides))


def _write_lock(folder, pid, host=None, age_s=0.0):
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    lock.write_text(json.dumps({"token": "x", "pid": pid, "host": host or socket.gethostname(), "job": None}))
    when = time.time() - age_s
    os.utime(lock, (when, when))
    return lock


def test_a_second_launch_of_a_live_run_is_refused_in_one_line(smoke_overrides):
    cfg = _cfg(smoke_overrides + FAST)
    folder = records.run_dir(cfg)
    with RunLock(folder, records.STALE_AFTER_S):          # the first launch, still running
        with pytest.raises(RmpeftError, match=r"is in use by pid \d+ on .*heartbeat 0 s ago"):
            trainer.train(cfg)
        assert records.read_record(folder) is None          # the refused launch wrote nothing
    assert trainer.train(cfg)["status"] == "finished"       # released: the run goes ahead
    assert not (folder / LOCK_FILE).exists()


def test_a_stale_or_dead_claim_is_taken_over(smoke_overrides):
    cfg = _cfg(smoke_overrides + FAST)
    folder = records.run_dir(cfg)
    _write_lock(folder, os.getpid(), host="elsewhere", age_s=2 * records.STALE_AFTER_S)   # silent too long
    assert trainer.train(cfg)["status"] == "finished"
    dead = _cfg(smoke_overrides + FAST + ["seed=5"])
    gone = 2 ** 22 + 12345                                   # no such process on this host
    _write_lock(records.run_dir(dead), gone)
    assert trainer.train(dead)["status"] == "finished"


def test_a_live_claim_on_another_host_is_respected(smoke_overrides):
    cfg = _cfg(smoke_overrides + FAST)
    _write_lock(records.run_dir(cfg), 1, host="node-7", age_s=records.HEARTBEAT_S)
    with pytest.raises(RmpeftError, match="in use by pid 1 on node-7"):
        trainer.train(cfg)


def test_an_interrupted_forced_rerun_keeps_the_finished_result(smoke_overrides, monkeypatch):
    first = trainer.train(_cfg(smoke_overrides + FAST))
    folder = records.run_dir(first["config"])
    delta_bytes = {p.name: p.read_bytes() for p in (folder / "delta").iterdir()}
    interrupt_training_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(_cfg(smoke_overrides + FAST + ["force=true"]))
    kept = records.read_record(folder)
    assert kept["status"] == "finished" and kept["test_metric"] == first["test_metric"]
    assert kept["started_at"] == first["started_at"]
    assert {p.name: p.read_bytes() for p in (folder / "delta").iterdir()} == delta_bytes
    assert json.loads((folder / records.NEXT_RECORD_FILE).read_text())["status"] == "failed"
    assert not (folder / "delta.next").exists() and not (folder / LOCK_FILE).exists()
    assert trainer.train(_cfg(smoke_overrides + FAST))["skipped"]   # still done


def test_a_finished_forced_rerun_replaces_record_and_delta(smoke_overrides, monkeypatch):
    first = trainer.train(_cfg(smoke_overrides + FAST))
    folder = records.run_dir(first["config"])
    time.sleep(1.1)   # record times have one-second resolution
    again = trainer.train(_cfg(smoke_overrides + FAST + ["force=true"]))
    assert again["status"] == "finished" and again["started_at"] != first["started_at"]
    assert records.read_record(folder)["started_at"] == again["started_at"]
    assert not (folder / records.NEXT_RECORD_FILE).exists() and not (folder / "delta.next").exists()
    assert (folder / "delta" / "delta.json").is_file() and again["delta"]["path"] == str(folder / "delta")
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("override", ["name=../../x", "name=/abs", "model.name=../..", "name=${oc.env:HOME}",
                                      "name=a/b", "name='~user'"])
def test_folder_names_never_leave_the_results_folder(smoke_overrides, results_root, override):
    with pytest.raises(RmpeftError, match="cannot name a run folder; expected a plain name"):
        trainer.train(compose_train(smoke_overrides + FAST + [override]))
    assert not results_root.exists() or not any(results_root.rglob("*.json"))
    assert not any(results_root.parent.glob("x"))


def test_records_and_deltas_are_readable_as_the_umask_allows(smoke_overrides):
    """Not private (0600/0700, as temporary files are made): the modes an ordinary file and folder get."""
    from rmpeft.run_folder import _UMASK

    rec = trainer.train(_cfg(smoke_overrides + FAST))
    folder = records.run_dir(rec["config"])
    assert stat.S_IMODE((folder / "record.json").stat().st_mode) == 0o666 & ~_UMASK
    assert stat.S_IMODE((folder / "delta").stat().st_mode) == 0o777 & ~_UMASK
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o666 & ~_UMASK for p in (folder / "delta").iterdir())
    if _UMASK & 0o044 == 0:
        assert (folder / "record.json").stat().st_mode & 0o044 == 0o044   # group and others read it


def test_a_folder_that_cannot_be_created_is_one_line(tmp_path, monkeypatch):
    """A results_root the permission check lets through (root on /proc, a full disk, ...) still fails in one line."""
    from pathlib import Path

    def refuse(self, *args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(RmpeftError, match=r"^cannot create the run folder .*run: No such file or directory$"):
        RunLock(tmp_path / "run", 60).acquire()
