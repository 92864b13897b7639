"""``rmpeft-train``: the Hydra entrypoint. A thin wrapper around :func:`rmpeft.trainer.train`.

    rmpeft-train model=opt-125m task=rte method=masking method.ratio=0.0001 optim.lr=1e-2 seed=1
    rmpeft-train experiment=smoke
    rmpeft-train --multirun method=masking method.ratio=0.01,0.001 optim.lr=1e-3,1e-2
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from rmpeft.config import CONF_DIR, run_hydra_command
from rmpeft.errors import USAGE_EXIT, RmpeftError

log = logging.getLogger("rmpeft")


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


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    from rmpeft.trainer import train

    export_slurm_distributed_env()
    try:
        record = train(cfg)
    except RmpeftError as e:
        if HydraConfig.get().mode == RunMode.RUN:
            print(f"rmpeft-train: error: {e}", file=sys.stderr)
            sys.exit(USAGE_EXIT)
        raise
    return record.get("val_metric")


def main() -> None:
    run_hydra_command("rmpeft-train", hydra_main)


if __name__ == "__main__":
    main()
