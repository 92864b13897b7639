"""One run's record from launch to end (rmpeft.lifecycle.RecordedRun), as training and delta evaluation
both use it: the running record and claim while the block runs, a failed record when it raises, a
result skipped unless forced, a forced rerun kept beside the old result, one live launch per folder."""

from __future__ import annotations

import json

import pytest

from rmpeft import records
from rmpeft.errors import RmpeftError
from rmpeft.lifecycle import RecordedRun
from rmpeft.run_folder import LOCK_FILE
from tests.helpers import compose_train


def _finish(overrides: list[str], test_metric: float) -> RecordedRun:
    recorded = RecordedRun(compose_train(overrides))
    with recorded as rec:
        rec.status, rec.test_metric = "finished", test_metric
    return recorded


def test_the_record_says_running_and_the_folder_is_claimed_while_the_block_runs(smoke_overrides):
    recorded = RecordedRun(compose_train(smoke_overrides))
    assert recorded.done is None
    with recorded:
        saved = records.read_record(recorded.folder)
        assert saved["status"] == "running" and saved["heartbeat_at"] and saved["wandb_id"] is None
        assert (recorded.folder / LOCK_FILE).exists()
        with pytest.raises(RmpeftError, match="is in use by"), RecordedRun(compose_train(smoke_overrides)):
            pass   # a second launch of the same run
        assert records.read_record(recorded.folder)["status"] == "running"   # untouched by that launch
    assert not (recorded.folder / LOCK_FILE).exists()


def test_a_block_that_raises_leaves_a_failed_record_and_the_error_propagates(smoke_overrides):
    recorded = RecordedRun(compose_train(smoke_overrides))
    with pytest.raises(ValueError), recorded:
        raise ValueError("no good\nsecond line")
    saved = records.read_record(recorded.folder)
    assert saved["status"] == "failed" and saved["error"] == "ValueError: no good" and saved["finished_at"]
    assert not (recorded.folder / LOCK_FILE).exists()


def test_a_result_is_skipped_unless_forced_and_a_failed_rerun_keeps_it(smoke_overrides):
    first = _finish(smoke_overrides, 0.5)
    assert first.result["status"] == "finished" and first.result["test_metric"] == 0.5
    again = RecordedRun(compose_train(smoke_overrides))
    assert again.done == {**records.read_record(first.folder), "skipped": True}
    forced = RecordedRun(compose_train([*smoke_overrides, "force=true"]))
    assert forced.done is None and forced.replacing == "finished"
    with pytest.raises(KeyboardInterrupt), forced:
        raise KeyboardInterrupt
    assert records.read_record(first.folder)["test_metric"] == 0.5                  # the result stays
    assert json.loads((first.folder / records.NEXT_RECORD_FILE).read_text())["status"] == "failed"
    _finish([*smoke_overrides, "force=true"], 0.75)                                  # a result replaces it
    assert records.read_record(first.folder)["test_metric"] == 0.75
    assert not (first.folder / records.NEXT_RECORD_FILE).exists()
