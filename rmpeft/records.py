"""Run folders and run records.

A run's folder is derived from its config, never from a timestamp, so that relaunching a finished
run is detected and skipped (sweeps are resumable):

    <results_root>/<name>/<model.name>/<task.name>/<method tag>/lr<optim.lr>/seed<seed>/record.json

where the method tag is ``method.name`` plus ``-r<ratio>`` for methods with a ratio
(``masking-r0.0001``). ``record.json`` is always written atomically (temp file + rename).

Record keys (the contract aggregation, sweeps and plots rely on):
    status            "running" | "finished" | "diverged" | "failed"
    error             message when failed/diverged, else null
    config            fully resolved config (dict)
    total_params      parameters of the base model
    trainable_params  trainable entries
    trainable_share   trainable_params / total_params
    epochs            [{"epoch", "train_loss", "val_metric"}]
    best_epoch        1-based epoch with the best validation metric
    val_metric        validation metric at best_epoch
    test_metric       test metric at best_epoch
    metric            metric name ("accuracy" or "f1")
    wall_s, peak_mem_bytes, versions, git_commit, started_at, finished_at
    distance_from_init  L2 distance between initial and final trainable parameters
    method_state      method-specific facts (e.g. AdaLoRA ranks)
    hessian           {"before": {...}, "after": {...}} when analysis.hessian=true
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from rmpeft.errors import RmpeftError

RECORD_FILE = "record.json"
STATUSES = ("running", "finished", "diverged", "failed")
# Runs in these states are done: a relaunch skips them. A diverged run is a result (the LR is too
# large), not an error.
DONE_STATUSES = ("finished", "diverged")


def _get(cfg: Any, dotted: str, default: Any = None) -> Any:
    node = cfg
    for part in dotted.split("."):
        if node is None:
            return default
        node = node.get(part) if hasattr(node, "get") else getattr(node, part, None)
    return default if node is None else node


def format_number(x: float) -> str:
    """Compact, stable text for a number in a folder name: 1e-2 -> '0.01', 1e-05 -> '1e-05'."""
    return f"{float(x):g}"


def method_tag(cfg: Any) -> str:
    """'masking-r0.0001' for methods with a ratio, else the method name."""
    name = str(_get(cfg, "method.name"))
    ratio = _get(cfg, "method.ratio")
    return f"{name}-r{format_number(ratio)}" if ratio is not None else name


def run_dir(cfg: Any) -> Path:
    """The folder of the run described by ``cfg`` (a DictConfig or nested dict)."""
    return (
        Path(str(_get(cfg, "results_root", "results/runs")))
        / str(_get(cfg, "name", "default"))
        / str(_get(cfg, "model.name"))
        / str(_get(cfg, "task.name"))
        / method_tag(cfg)
        / f"lr{format_number(_get(cfg, 'optim.lr'))}"
        / f"seed{_get(cfg, 'seed', 0)}"
    )


def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON to ``path`` atomically: a reader sees the old or the new file, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False, default=_json_default)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_record(folder: Path, record: dict[str, Any]) -> Path:
    path = Path(folder) / RECORD_FILE
    atomic_write_json(path, record)
    return path


def read_record(folder_or_file: Path) -> dict[str, Any] | None:
    """The record in a run folder (or at a record path); None when there is none.

    A record that exists but cannot be parsed is an error naming the file: it is never silently
    treated as missing (which would rerun and overwrite it).
    """
    p = Path(folder_or_file)
    if p.is_dir() or p.name != RECORD_FILE:
        p = p / RECORD_FILE
    if not p.exists():
        return None
    try:
        with open(p) as f:
            rec = json.load(f)
    except json.JSONDecodeError as e:
        raise RmpeftError(f"corrupt run record {p}: {e.msg} at line {e.lineno}") from e
    if not isinstance(rec, dict) or rec.get("status") not in STATUSES:
        raise RmpeftError(f"corrupt run record {p}: missing or invalid 'status'")
    return rec


def run_status(cfg: Any) -> str:
    """'missing', or the status of the record in the run folder of ``cfg``."""
    rec = read_record(run_dir(cfg))
    return "missing" if rec is None else str(rec["status"])


def find_records(roots: list[Path] | Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every (record path, record) under the given results folders, sorted by path."""
    if isinstance(roots, (str, Path)):
        roots = [Path(roots)]
    out = []
    for root in roots:
        for p in sorted(Path(root).rglob(RECORD_FILE)):
            rec = read_record(p)
            if rec is not None:
                out.append((p, rec))
    return out


def git_commit() -> str | None:
    """The commit of the rmpeft checkout, when it is a git repository."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def versions() -> dict[str, str]:
    """Versions of the libraries that determine a run's numbers."""
    import importlib.metadata as md

    out = {}
    for pkg in ("rmpeft", "torch", "transformers", "datasets", "peft", "accelerate", "hydra-core"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out
