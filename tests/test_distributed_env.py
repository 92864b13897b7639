"""Multi-task SLURM jobs become torch.distributed ranks that Accelerate picks up."""

from __future__ import annotations

import os

from rmpeft.job import export_slurm_distributed_env

SLURM_TASK_1_OF_4 = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "1", "SLURM_NTASKS": "4", "SLURM_PROCID": "1", "SLURM_LOCALID": "1",
                     "SLURM_NNODES": "1", "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "gpu-node-7",
                     "SLURM_STEP_NODELIST": "gpu-node-7"}


def _clear(monkeypatch):
    """A private copy of the environment: what the export writes must not reach later tests."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")}
    monkeypatch.setattr(os, "environ", env)


def test_multi_task_slurm_job_exports_rank_and_world_size(monkeypatch):
    _clear(monkeypatch)
    os.environ.update(SLURM_TASK_1_OF_4)
    assert export_slurm_distributed_env()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("1", "4", "1")
    assert os.environ["MASTER_ADDR"] == "gpu-node-7" and int(os.environ["MASTER_PORT"]) > 0


def test_single_task_and_launcher_started_runs_are_left_alone(monkeypatch):
    _clear(monkeypatch)
    os.environ.update({**SLURM_TASK_1_OF_4, "SLURM_NTASKS": "1"})
    assert not export_slurm_distributed_env() and "RANK" not in os.environ
    os.environ.update(SLURM_NTASKS="4", LOCAL_RANK="0")  # accelerate launch / torchrun already set it
    assert not export_slurm_distributed_env() and "RANK" not in os.environ
