"""``rmpeft-train``: the Hydra entrypoint. A thin wrapper around :func:`rmpeft.trainer.train`.

    rmpeft-train model=opt-125m task=rte method=masking method.ratio=0.0001 optim.lr=1e-2 seed=1
    rmpeft-train experiment=smoke
    rmpeft-train --multirun method=masking method.ratio=0.01,0.001 optim.lr=1e-3,1e-2
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from rmpeft.errors import RmpeftError, unknown_choice

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
# Config groups whose choice is checked before Hydra composes (one-line error with the valid choices).
CHECKED_GROUPS = ("model", "task", "method", "optim", "logger", "cluster", "experiment")

log = logging.getLogger("rmpeft")


def group_choices(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    """Names of the configs in a config group folder."""
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def check_choices(args: list[str], conf_dir: Path = CONF_DIR) -> None:
    """Raise a one-line error for ``group=value`` command-line overrides naming no config of that group."""
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        if key not in CHECKED_GROUPS or value in ("null", ""):
            continue
        choices = group_choices(key, conf_dir)
        for v in value.split(","):  # multirun lists
            if v not in choices:
                raise unknown_choice(key, v, choices)


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
            sys.exit(1)
        raise
    return record.get("val_metric")


def main() -> None:
    try:
        check_choices(sys.argv[1:])
    except RmpeftError as e:
        print(f"rmpeft-train: error: {e}", file=sys.stderr)
        sys.exit(2)
    hydra_main()


if __name__ == "__main__":
    main()
