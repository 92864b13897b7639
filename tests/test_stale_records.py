"""A run killed from outside leaves a `running` record: it is told apart by its heartbeat's age and
reported as failed (stale) by the tables and the sweep status."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from rmpeft import records
from rmpeft.records import RunRecord, is_stale, stale_reason
from rmpeft.reporting.runs import run_from_record

NOW = datetime(2025, 1, 2, 12, 0, tzinfo=timezone.utc)
CONFIG = {"model": {"name": "m"}, "task": {"name": "t"}, "method": {"name": "lora"}, "optim": {"lr": 1e-3}, "seed": 0}


def _rec(status="running", heartbeat=None, started=None) -> dict:
    return {"status": status, "config": CONFIG, "heartbeat_at": heartbeat and heartbeat.isoformat(),
            "started_at": started and started.isoformat()}


def test_heartbeat_age_decides():
    fresh, old = NOW - timedelta(seconds=60), NOW - timedelta(seconds=records.STALE_AFTER_S + 1)
    assert not is_stale(_rec(heartbeat=fresh), NOW)
    assert is_stale(_rec(heartbeat=old), NOW)
    assert is_stale(_rec(heartbeat=fresh), NOW, max_age_s=30)
    # no heartbeat (records of earlier versions): the start time counts; neither: stale
    assert is_stale(_rec(started=old), NOW) and not is_stale(_rec(started=fresh), NOW)
    assert not is_stale(_rec(), NOW)   # no timestamp to judge by
    # only running records can be stale
    assert not is_stale(_rec("finished", heartbeat=old), NOW) and not is_stale(_rec("failed", heartbeat=old), NOW)
    assert is_stale(RunRecord.from_dict(_rec(heartbeat=old)), NOW)
    assert "no heartbeat since 2025-01-02" in stale_reason(_rec(heartbeat=old))


def test_new_record_fields_round_trip(tmp_path):
    rec = RunRecord(status="finished", train_s=1.5, eval_s=0.5, train_examples_per_s=10.0, eval_examples_per_s=4.0,
                    max_batch_tokens=512, heartbeat_at=NOW.isoformat())
    records.write_record(tmp_path, rec)
    back = records.load_record(tmp_path)
    assert (back.train_s, back.eval_s, back.max_batch_tokens, back.heartbeat_at) == (1.5, 0.5, 512, NOW.isoformat())
    assert back.extra == {}


def test_tables_report_a_stale_run_as_failed():
    old = datetime.now(timezone.utc) - timedelta(hours=5)
    stale = run_from_record(_rec(heartbeat=old))
    assert stale.status == "failed" and stale.error.startswith("stale: still 'running'")
    live = run_from_record(_rec(heartbeat=datetime.now(timezone.utc)))
    assert live.status == "running"


def test_sweep_status_reports_a_stale_run_as_failed(tmp_path):
    from rmpeft.sweeps.status import SweepRun, refresh_status

    old = datetime.now(timezone.utc) - timedelta(hours=5)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    records.write_record(tmp_path / "a", _rec(heartbeat=old))
    records.write_record(tmp_path / "b", _rec(heartbeat=datetime.now(timezone.utc)))
    runs = [SweepRun(("x=1",), tmp_path / "a", "h1"), SweepRun(("x=2",), tmp_path / "b", "h2")]
    refresh_status(runs)
    assert [r.status for r in runs] == ["failed", "running"]
    assert runs[0].error.startswith("stale:")


def test_heartbeat_thread_beats_while_the_block_runs_and_survives_errors():
    import time

    from rmpeft.run_stats import Heartbeat

    calls = []

    def beat():
        calls.append(time.monotonic())
        if len(calls) == 2:
            raise OSError("disk full")   # a failed write must not stop the beats (or the run)

    with Heartbeat(beat, 0.01):
        time.sleep(0.2)
    n = len(calls)
    assert n >= 4
    time.sleep(0.05)
    assert len(calls) == n   # stopped with the block
