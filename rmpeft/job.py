"""What one launched job does, whichever command launched it (``rmpeft-train`` or ``rmpeft-sweep``):
join the SLURM job's torch.distributed ranks, train the config and return the value a sweeper optimises."""

from __future__ import annotations

import os

from omegaconf import DictConfig


def export_slurm_distributed_env() -> bool:
    """In a submitit SLURM job with several tasks (e.g. ``cluster=slurm`` full fine-tuning of OPT-13b on 4 GPUs),
    export the torch.distributed variables (MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK) that
    Accelerate initialises its process group from. Returns whether it did. Runs started by
    ``accelerate launch``/``torchrun`` already have them and are left alone."""
    in_submitit_slurm_job = os.environ.get("SUBMITIT_EXECUTOR") == "slurm"
    if not in_submitit_slurm_job or int(os.environ.get("SLURM_NTASKS", "1")) <= 1 or "LOCAL_RANK" in os.environ:
        return False
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return True


def run_job(cfg: DictConfig) -> float | None:
    """Train one composed config; its validation metric (what a Hydra sweeper optimises)."""
    from rmpeft.trainer import train

    export_slurm_distributed_env()
    return train(cfg).get("val_metric")
