"""rmpeft-preview: JSON lines of rendered examples and the split sizes, nothing else on stdout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from rmpeft.config import check_choices
from rmpeft.errors import RmpeftError
from rmpeft.preview import preview_lines

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tasks"


def compose_preview(overrides: list[str]):
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        return compose("preview", overrides=overrides)


def test_preview_prints_n_examples_then_split_sizes():
    cfg = compose_preview(["task=copa", f"task.data_dir={FIXTURES / 'COPA'}", "n=2", "task.num_val=1"])
    lines = [json.loads(line) for line in preview_lines(cfg)]
    assert len(lines) == 3
    assert lines[-1] == {"split_sizes": {"train": 2, "validation": 1, "test": 1}}
    for rec in lines[:2]:
        assert set(rec) == {"prompt", "candidates", "gold"}
        assert rec["prompt"].endswith((" because", " so")) and len(rec["candidates"]) == 2


def test_preview_of_generation_and_record_tasks_shows_gold_answers():
    cfg = compose_preview(["task=squad", f"task.data_dir={FIXTURES / 'SQuAD'}", "task.num_val=1", "split=test"])
    first = json.loads(preview_lines(cfg)[0])
    assert first["answers"] == ["100 degrees Celsius", "100 degrees", "100 degrees Celsius"]
    assert first["candidates"] == [" 100 degrees Celsius\n"] and first["gold"] == 0
    cfg = compose_preview(["task=record", f"task.data_dir={FIXTURES / 'ReCoRD'}", "task.num_val=1", "split=test"])
    first = json.loads(preview_lines(cfg)[0])
    assert first["gold_set"] == [first["gold"]]
    assert first["candidates"][first["gold"]].startswith(" Leaders met in Paris")


def test_preview_rejects_unknown_split_and_task():
    with pytest.raises(RmpeftError, match="unknown split 'dev'; valid choices: test, train, validation"):
        preview_lines(compose_preview(["task=synthetic", "split=dev"]))
    with pytest.raises(RmpeftError, match="unknown task 'mnli'; valid choices: boolq, cb, .*copa, .*sst2"):
        check_choices(["n=2", "task=mnli"], groups=("task",))
    check_choices(["task=rte", "n=1"], groups=("task",))


def run_preview(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rmpeft.preview", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def test_preview_command_stdout_is_only_json():
    proc = run_preview("task=synthetic", "n=2", "data_seed=5")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == 3 and lines[-1] == {"split_sizes": {"train": 64, "validation": 32, "test": 32}}
    assert all(rec["candidates"] == [" terrible", " great"] for rec in lines[:2])


def test_preview_command_bad_input_is_one_line_on_stderr(tmp_path):
    proc = run_preview("task=mnli")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().startswith("rmpeft-preview: error: unknown task 'mnli'; valid choices:")
    proc = run_preview("task=rte", f"task.data_dir={tmp_path}")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == f"rmpeft-preview: error: missing data file {tmp_path / 'train.jsonl'} " \
                                  f"(task.files.train in task.data_dir={tmp_path})"
