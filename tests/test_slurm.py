"""rmpeft-sweep on a real SLURM cluster (`bash scripts/slurm-local.sh up` starts a single-node one).

Skipped when SLURM is not reachable. The runs are tiny-opt on the synthetic task, one epoch each, on
the CPUs of the node; each job is a separate process that imports torch, so allow ~10-30 s per job.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from rmpeft import records
from tests.helpers import REPO

pytestmark = pytest.mark.slurm

SWEEP_TIMEOUT_S = 240  # a hang fails the test instead of blocking the suite
KILL_SECOND_TASK = (
    "cluster.setup=['if [ \"$SLURM_ARRAY_TASK_ID\" = 1 ]; "
    "then scancel \"$SLURM_ARRAY_JOB_ID\"_\"$SLURM_ARRAY_TASK_ID\"; sleep 60; fi']"
)


def _unavailable() -> str | None:
    """Why SLURM cannot be used here, or None."""
    for tool in ("sinfo", "sbatch", "sacct", "scancel"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    try:
        nodes = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15)
        acct = subprocess.run(["sacct", "-n", "-X", "-S", "now-1minutes"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"sinfo/sacct did not answer: {e}"
    if nodes.returncode != 0:
        return f"sinfo failed: {nodes.stderr.strip()[:200]}"
    if not any(s.startswith(("idle", "mix", "alloc")) for s in nodes.stdout.split()):
        return f"no usable node (states: {nodes.stdout.split()})"
    if acct.returncode != 0:
        return f"sacct failed (no accounting): {acct.stderr.strip()[:200]}"
    return None


@pytest.fixture(scope="module")
def slurm() -> None:
    reason = _unavailable()
    if reason:
        pytest.skip(f"SLURM not reachable ({reason}); start one with: bash scripts/slurm-local.sh up")


def _sweep_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / f"slurm-{uuid.uuid4().hex[:8]}.yaml"  # unique SLURM job name: rmpeft-<stem>
    path.write_text(body)
    return path


def _rmpeft_sweep(args: list[str]) -> tuple[int, dict, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "rmpeft.sweeps", *args, "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=SWEEP_TIMEOUT_S,
        env={**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"},
    )
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no JSON from rmpeft-sweep (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc.returncode, json.loads(lines[-1]), proc.stderr


def _job_states(sweep_root: Path) -> dict[str, str]:
    """SLURM accounting states of the jobs a sweep submitted (their submitit folders are named by job id)."""
    ids = sorted(p.name for p in sweep_root.rglob(".submitit/*") if p.is_dir() and p.name[0].isdigit())
    states: dict[str, str] = {}
    for _ in range(30):  # accounting lags the controller by a few seconds
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(ids)],
                             capture_output=True, text=True, timeout=15).stdout
        states = dict(line.split("|", 1) for line in out.strip().splitlines() if "|" in line)
        if all(i in states and states[i] not in ("RUNNING", "PENDING") for i in ids):
            break
        time.sleep(1)
    return states


@pytest.fixture
def overrides(tmp_path, cache_dir) -> list[str]:
    return [f"results_root={tmp_path}/runs", f"cache_dir={cache_dir}", "trainer.progress=false",
            "trainer.epochs=1", "cluster=slurm"]


def test_a_four_run_sweep_delivers_four_finished_records(slurm, tmp_path, overrides):
    sweep = _sweep_file(tmp_path, (REPO / "sweeps" / "smoke.yaml").read_text())
    rc, counts, log = _rmpeft_sweep([str(sweep), *overrides])
    assert rc == 0, log[-3000:]
    assert counts["launched"] == counts["finished"] == counts["total"] == 4
    found = records.find_records(tmp_path / "runs")
    assert len(found) == 4 and all(rec["status"] == "finished" and rec["test_metric"] is not None for _, rec in found)
    states = _job_states(tmp_path / "sweeps")
    assert len(states) == 4 and set(states.values()) == {"COMPLETED"}, states


def test_a_killed_job_is_reported_failed_and_only_it_is_relaunched(slurm, tmp_path, overrides):
    sweep = _sweep_file(tmp_path, "fixed: {experiment: smoke, optim.lr: 1e-2}\nparams: {seed: '1,2,3'}\n")
    started = time.time()
    rc, counts, log = _rmpeft_sweep([str(sweep), *overrides, KILL_SECOND_TASK])
    assert time.time() - started < SWEEP_TIMEOUT_S
    assert rc == 1, log[-3000:]
    assert (counts["launched"], counts["finished"], counts["failed"], counts["missing"]) == (3, 2, 1, 0)
    dead = counts["failed_runs"][0]
    assert "CANCELLED" in dead["error"] and all(Path(p).exists() for p in dead["logs"])
    assert records.read_record(dead["run_dir"])["status"] == "failed"
    assert "CANCELLED" in " ".join(_job_states(tmp_path / "sweeps").values())
    intact = {str(p): rec["finished_at"] for p, rec in records.find_records(tmp_path / "runs") if rec["status"] == "finished"}
    assert len(intact) == 2

    rc, counts, log = _rmpeft_sweep([str(sweep), *overrides])
    assert rc == 0, log[-3000:]
    assert (counts["launched"], counts["finished"], counts["failed"]) == (1, 3, 0)
    assert records.read_record(dead["run_dir"])["status"] == "finished"
    after = {str(p): rec["finished_at"] for p, rec in records.find_records(tmp_path / "runs")}
    assert all(after[p] == t for p, t in intact.items())
