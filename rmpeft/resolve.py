"""What a run config's machine-dependent fields resolve to, before its identity is taken.

Two fields of a composed config name a choice rather than a fact: ``trainer.device: auto`` and
``trainer.precision: auto``. A CPU fp32 run and a GPU bf16 run of the same ``auto`` config are
different runs, so their identities must differ: :func:`resolve_run_config` replaces ``auto`` by what
it resolves to on the machine that runs the config. Local task data (``task.data_dir``) is a path on
one machine; the run's identity takes the content of the files read instead
(``task.data_fingerprint``), so the same files give the same identity in any folder and different
files at the same path never share one.

Where a run will execute is not always this machine: a sweep submitted to SLURM from a login node
resolves ``auto`` as its job will (``cuda`` when the job asks for GPUs; bf16 assumed on those GPUs,
see docs/records.md). The run itself resolves again on its node, so a wrong guess costs at most a
status line, never a wrongly reused result.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from rmpeft.errors import RmpeftError
from rmpeft.identity import get_path
from rmpeft.lr_auto.calibration import resolved_constant
from rmpeft.lr_auto.estimators import get_estimator
from rmpeft.lr_auto.settings import is_auto

INIT_FINGERPRINT_FIELD = "init_fingerprint"   # method.init_fingerprint: sha256 over the files of method.init_from
FINGERPRINT_FIELD = "data_fingerprint"   # task.data_fingerprint: sha256 over the local files a task reads
# Clusters whose jobs run on other machines (what they resolve to follows the job's GPU request).
REMOTE_CLUSTERS = ("slurm",)


def machine_device() -> str:
    """``cuda`` when this process sees a GPU, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def target_device(cfg: Any) -> str:
    """The device ``cfg`` will run on: its ``trainer.device``, or for ``auto`` this machine's, or for a
    remote cluster the job's (``cuda`` when it asks for GPUs)."""
    device = str(get_path(cfg, "trainer.device", "auto"))
    if device != "auto":
        return device
    if str(get_path(cfg, "cluster.name", "local")) in REMOTE_CLUSTERS:
        return "cuda" if get_path(cfg, "cluster.gpus") else "cpu"
    return machine_device()


def target_precision(precision: str, device: str) -> str:
    """``trainer.precision`` on ``device``: the value itself, or what ``auto`` picks there (on a GPU this
    machine cannot see, bf16)."""
    from rmpeft.models import resolve_precision

    if precision != "auto" or device != "cuda" or machine_device() == "cuda":
        import torch

        return resolve_precision(precision, torch.device(device))
    return "bf16"


def _files_read(task_cfg: Any, folder: Path) -> list[Path]:
    """The files a task reads from ``folder``: its named ``files`` (text tasks), else every file below it."""
    files = task_cfg.get("files") if hasattr(task_cfg, "get") else None
    roles = ("test",) if task_cfg.get("test_pool_share") is not None else ("train", "test")
    named = [str(files.get(role)) for role in roles if files is not None and files.get(role)]
    if named and not task_cfg.get("layout"):
        return [folder / name for name in named]
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


@lru_cache(maxsize=4096)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of one file (cached per path, size and modification time: a sweep reads each file once)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def data_fingerprint(task_cfg: Any) -> str | None:
    """sha256 over the names (relative to ``task.data_dir``) and contents of the files the task reads;
    None for tasks without ``data_dir``. Files that are missing are left to the reader to report."""
    data_dir = task_cfg.get("data_dir") if hasattr(task_cfg, "get") else None
    if not data_dir:
        return None
    folder = Path(str(data_dir)).expanduser()
    if not folder.is_dir():
        raise RmpeftError(f"task.data_dir='{data_dir}' is not an existing folder")
    h = hashlib.sha256()
    for path in _files_read(task_cfg, folder):
        if not path.is_file():
            continue
        stat = path.stat()
        h.update(f"{path.relative_to(folder).as_posix()}\0{_file_digest(str(path), stat.st_size, stat.st_mtime_ns)}\n"
                 .encode())
    return h.hexdigest()


def folder_fingerprint(folder: Path) -> str:
    """sha256 over the names and contents of every file below ``folder``."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        h.update(f"{path.relative_to(folder).as_posix()}\0{_file_digest(str(path), stat.st_size, stat.st_mtime_ns)}\n"
                 .encode())
    return h.hexdigest()


def auto_lr_constant(cfg: Any) -> float | None:
    """For ``optim.lr=auto``: the constant its estimator will use (``optim.lr_auto.constant``, or the
    theory or calibrated one); None for a numeric LR."""
    if not is_auto(get_path(cfg, "optim.lr")) or "lr_auto" not in cfg.optim:
        return None
    optim = OmegaConf.to_container(cfg.optim, resolve=True)
    return resolved_constant(get_estimator(str(optim["lr_auto"]["estimator"])), optim)


def resolve_run_config(cfg: DictConfig) -> DictConfig:
    """``cfg`` with ``trainer.device`` / ``trainer.precision`` resolved for the machine that runs it,
    ``task.data_fingerprint`` set from the local files it reads and, for ``optim.lr=auto``,
    ``optim.lr_auto.constant`` set to the constant its estimator uses (changed in place and returned). A config
    resolved once resolves to itself."""
    device = target_device(cfg)
    precision = target_precision(str(get_path(cfg, "trainer.precision", "auto")), device)
    fingerprint = data_fingerprint(cfg.task)
    init_from = cfg.method.get("init_from") if "method" in cfg else None
    lr_constant = auto_lr_constant(cfg)
    if init_from and not Path(str(init_from)).expanduser().is_dir():
        raise RmpeftError(f"method.init_from='{init_from}' is not an existing folder; expected a peft adapter "
                          "folder or an rmpeft delta")
    with open_dict(cfg):
        if init_from:   # the starting point counts by its content, like local data
            cfg.method[INIT_FINGERPRINT_FIELD] = folder_fingerprint(Path(str(init_from)).expanduser())
        cfg.trainer.device = device
        cfg.trainer.precision = precision
        if lr_constant is not None:   # optim.lr=auto: the estimator's constant, as it is on this machine
            cfg.optim.lr_auto.constant = lr_constant
        if fingerprint is not None:
            cfg.task[FINGERPRINT_FIELD] = fingerprint
        elif FINGERPRINT_FIELD in cfg.task:   # a config reused from a run with local data
            del cfg.task[FINGERPRINT_FIELD]
    return cfg


def resolve_recorded_config(config: dict[str, Any], device: str = "cpu", precision: str | None = None) -> dict[str, Any]:
    """A record's stored config as :func:`resolve_run_config` would have left it, for records written
    before resolution existed: ``auto`` device/precision become ``device`` / ``precision`` (the machine
    the run is known to have used; ``precision`` None: what ``auto`` picks on that device, bf16 on a GPU),
    and local data gets its fingerprint when its folder is readable here. Changes ``config`` in place."""
    trainer = config.get("trainer") or {}
    if trainer.get("device", "auto") == "auto":
        trainer["device"] = device
    if trainer.get("precision", "auto") == "auto":
        trainer["precision"] = precision or ("fp32" if trainer["device"] == "cpu" else "bf16")
    task = config.get("task") or {}
    if task.get("data_dir") and not task.get(FINGERPRINT_FIELD) and Path(str(task["data_dir"])).expanduser().is_dir():
        task[FINGERPRINT_FIELD] = data_fingerprint(task)
    return config
