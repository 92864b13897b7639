"""Keeping a run's delta in its folder, and exporting a run's delta (``rmpeft-export``).

``trainer.save_delta``: ``auto`` (default) keeps the delta of every method whose update is small
(every method but full fine-tuning, :attr:`Method.small_delta`), ``always`` keeps it for full
fine-tuning too, ``never`` keeps none. The delta goes to ``<run_dir>/delta`` and the record's ``delta``
field gives its path, size in bytes and fingerprint.
"""

from __future__ import annotations

import dataclasses
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from rmpeft.base_model import base_fingerprint
from rmpeft.checkpoints import write_once
from rmpeft.errors import RmpeftError, unknown_choice
from rmpeft.identity import config_value
from rmpeft.methods import MethodHandle, get_method
from rmpeft.methods.delta_format import finish_metadata, open_delta
from rmpeft.records import RunRecord, read_record, run_dir, strict_json, versions
from rmpeft.run import Run, build_run
from rmpeft.run_folder import DELTA_DIR, delta_folder_to_write, share_like_umask
from rmpeft.validation import SAVE_DELTA

LEGACY_TRAINABLE_FILE = "trainable.pt"    # trainable tensors in handle order, written by older runs


def wanted(cfg: Any) -> bool:
    """Whether ``trainer.save_delta`` asks to keep this run's delta."""
    policy = str(config_value(cfg, "trainer.save_delta"))
    if policy not in SAVE_DELTA:
        raise unknown_choice("trainer.save_delta", policy, SAVE_DELTA)
    return policy == "always" or (policy == "auto" and get_method(str(cfg.method.name)).small_delta)


def write_delta(handle: MethodHandle, cfg: DictConfig, rec: RunRecord | dict[str, Any], folder: Path) -> dict[str, Any]:
    """Write the delta of a trained ``handle`` (unwrapped model) into ``folder`` (replaced atomically);
    returns its metadata."""
    get = rec.get if isinstance(rec, dict) else (lambda k, d=None: getattr(rec, k, d))
    method = get_method(str(cfg.method.name))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    written: dict[str, Any] = {}

    def write(tmp: Path) -> None:
        share_like_umask(tmp)   # mkdtemp makes it private; a results folder may be shared
        facts = method.export_delta(handle, tmp)
        meta = strict_json({
            "method": method.name,
            "method_config": resolved["method"],
            "method_state": handle.state_for_record(),
            "delta": facts,
            "base": {**base_fingerprint(cfg.model, str(cfg.cache_dir)), "model_config": resolved["model"]},
            "run": {"identity_hash": get("identity_hash"), "run_dir": get("run_dir"), "metric": get("metric"),
                    "best_epoch": get("best_epoch"), "val_metric": get("val_metric"),
                    "test_metric": get("test_metric"), "trainable_params": get("trainable_params"),
                    "total_params": get("total_params"), "config": resolved},
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(),
        }, {})
        written.update(finish_metadata(tmp, meta))
        for path in tmp.rglob("*"):   # some writers (safetensors) make private files
            share_like_umask(path)

    write_once(Path(folder), write, replace=True)
    return written


def record_entry(meta: dict[str, Any], path: Path) -> dict[str, Any]:
    """The record's ``delta`` field: where the delta is, its tensor bytes and fingerprint."""
    return {"path": str(path), "bytes": int(meta["bytes"]), "fingerprint": meta["fingerprint"]}


def keep_run_delta(run: Run, rec: RunRecord) -> dict[str, Any] | None:
    """At the end of a finished run: write ``<run_dir>/delta`` when ``trainer.save_delta`` asks for it;
    returns the record's ``delta`` field (None when no delta is kept)."""
    if not wanted(run.cfg):
        return None
    handle = dataclasses.replace(run.handle, model=run.accelerator.unwrap_model(run.handle.model))
    folder = run_dir(run.cfg)
    return record_entry(write_delta(handle, run.cfg, rec, delta_folder_to_write(folder)), folder / DELTA_DIR)


def load_trainable(path: Path, params: list[torch.Tensor]) -> None:
    """Copy the tensors of a legacy ``trainable.pt`` into ``params`` (same count, shapes, order)."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(saved, (list, tuple)) or len(saved) != len(params):
        n = len(saved) if isinstance(saved, (list, tuple)) else type(saved).__name__
        raise RmpeftError(f"{path} holds {n} tensors but the rebuilt run has {len(params)} trainable tensors")
    for i, (p, s) in enumerate(zip(params, saved)):
        if tuple(p.shape) != tuple(s.shape):
            raise RmpeftError(f"{path}: tensor {i} has shape {tuple(s.shape)} but the rebuilt run expects "
                              f"{tuple(p.shape)} (was the config or the code changed since the run?)")
    with torch.no_grad():
        for p, s in zip(params, saved):
            p.copy_(s.to(device=p.device, dtype=p.dtype))


def export_run(folder: Path, out: Path) -> dict[str, Any]:
    """``rmpeft-export``: the delta of the run in ``folder`` written to ``out``; returns its metadata.

    A run that kept its delta is copied (after checking it); an older run with ``trainable.pt`` is
    rebuilt from its recorded config and its trained tensors exported.
    """
    folder, out = Path(folder), Path(out)
    record = read_record(folder)
    if record is None:
        raise RmpeftError(f"no run record at {folder / 'record.json'}")
    if record.get("status") != "finished":
        raise RmpeftError(f"run {folder} is {record.get('status')}, not finished: it has no trained delta")
    if out.exists():
        raise RmpeftError(f"--out {out} exists; choose a new path")
    kept = folder / DELTA_DIR
    if (kept / "delta.json").is_file():
        meta = open_delta(kept).meta
        shutil.copytree(kept, out)
        return meta
    legacy = folder / LEGACY_TRAINABLE_FILE
    if not legacy.is_file():
        raise RmpeftError(f"run {folder} kept no delta ({DELTA_DIR}/ or {LEGACY_TRAINABLE_FILE}); rerun it with "
                          "trainer.save_delta=always force=true")
    cfg = OmegaConf.create(record["config"])
    OmegaConf.set_struct(cfg, False)
    cfg.trainer.progress = False
    run = build_run(cfg)
    load_trainable(legacy, run.handle.trainable_parameters())
    return write_delta(run.handle, cfg, record, out)
