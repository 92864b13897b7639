"""Run folders and run records: the one typed record schema and its atomic, strict-JSON I/O.

A run's folder is derived from its config, never from a timestamp, so that relaunching a finished
run is detected and skipped (sweeps are resumable):

    <results_root>/<name>/<model.name>/<task.name>/<method tag>/lr<optim.lr>/seed<seed>-<identity hash>/record.json

The method tag is ``method.name`` plus ``-r<ratio>`` for methods with a ratio (``masking-r0.0001``);
the identity hash (:mod:`rmpeft.identity`) covers every result-changing field, so two configs that
differ in any of them (LoRA ``r``, ``trainer.epochs``, ``trainer.max_steps``, ...) never share a folder.
``record.json`` is written atomically (temp file + rename) and is strict JSON: a NaN or infinite
value is written as null and the reason is kept under ``nulls``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rmpeft.errors import RmpeftError
from rmpeft.identity import config_value, get_path, identity_hash, run_identity, setting_hash, setting_identity
from rmpeft.run_folder import NEXT_RECORD_FILE, RECORD_FILE, discard_next_delta, promote_next, share_like_umask

STATUSES = ("running", "finished", "diverged", "failed")
# Runs in these states are done: a relaunch skips them. A diverged run is a result (the LR is too
# large), not an error.
DONE_STATUSES = ("finished", "diverged")
# A running run rewrites its record at least every HEARTBEAT_S seconds; one silent for STALE_AFTER_S
# is taken as killed.
HEARTBEAT_S = 60.0
STALE_AFTER_S = 1800.0

__all__ = [
    "DONE_STATUSES", "HEARTBEAT_S", "NEXT_RECORD_FILE", "RECORD_FILE", "STALE_AFTER_S", "STATUSES", "RunRecord",
    "atomic_write_json", "check_result", "discard_next_delta", "find_records", "format_number", "get_path", "git_commit", "identity_hash", "is_stale", "unhashed_run_dir",
    "load_record", "method_tag", "promote_next", "read_record", "run_dir", "run_identity", "run_status", "setting_hash",
    "setting_identity", "stale_reason", "strict_json", "to_json_dict", "versions", "write_record",
]


@dataclass
class RunRecord:
    """What one run produced. ``record.json`` holds ``to_dict()``; metrics are fractions in [0, 1]."""

    status: str = "running"                  # one of STATUSES
    error: str | None = None                 # first line of the error when failed/diverged
    config: dict[str, Any] = field(default_factory=dict)   # the fully resolved config
    run_dir: str | None = None
    identity_hash: str | None = None         # hash of run_identity(config); the folder's suffix
    metric: str | None = None                # "accuracy" or "f1"
    total_params: int | None = None          # parameters of the base model
    trainable_params: int | None = None
    trainable_share: float | None = None     # trainable_params / total_params
    epochs: list[dict[str, Any]] = field(default_factory=list)   # {"epoch", "train_loss", "val_metric", ...}
    best_epoch: int | None = None            # 1-based epoch restored before test
    val_metric: float | None = None          # validation metric at best_epoch
    test_metric: float | None = None         # test metric at best_epoch
    distance_from_init: float | None = None  # L2 distance between initial and final trainable parameters
    skipped_steps: int | None = None         # optimizer steps skipped for non-finite gradients (nonfinite_steps=skip)
    resumed_from_epoch: int | None = None    # the run continued after this many epochs of an interrupted attempt
    wandb_id: str | None = None              # the wandb run this run logs into (kept by a resumed attempt)
    method_state: dict[str, Any] | None = None   # method-specific facts (e.g. AdaLoRA ranks)
    split_sizes: dict[str, int] | None = None
    wall_s: float | None = None
    train_s: float | None = None             # seconds in training steps (validation excluded)
    eval_s: float | None = None              # seconds in validation and test evaluation
    train_examples_per_s: float | None = None
    eval_examples_per_s: float | None = None
    peak_mem_bytes: int | None = None
    max_batch_tokens: int | None = None      # largest text batch, candidate rows x padded length
    heartbeat_at: str | None = None          # last time a running run rewrote its record (UTC, ISO 8601)
    versions: dict[str, str] = field(default_factory=dict)
    git_commit: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    hessian: dict[str, Any] | None = None    # {"before", "after"} with analysis.hessian=true
    lr_auto: dict[str, Any] | None = None    # optim.lr=auto: the predicted lr, its estimator, constant, quantities, seconds
    delta: dict[str, Any] | None = None      # the kept/evaluated delta: {"path", "bytes", "fingerprint", ...}
    nulls: dict[str, str] = field(default_factory=dict)   # dotted key -> why it is null ("nan", "inf", ...)
    extra: dict[str, Any] = field(default_factory=dict)   # any other key (kept on round trips)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        """Parse a record dict; unknown keys are kept in ``extra``. Records from before the identity
        hash existed get it computed from their stored config."""
        known = {f.name for f in fields(cls)} - {"extra"}
        rec = cls(**{k: v for k, v in data.items() if k in known},
                  extra={k: v for k, v in data.items() if k not in known and k != "extra"} | dict(data.get("extra") or {}))
        if rec.identity_hash is None and rec.config:
            rec.identity_hash = identity_hash(rec.config)
        return rec

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        extra = out.pop("extra")
        if not out["nulls"]:
            del out["nulls"]
        return out | extra

    def get(self, dotted: str, default: Any = None) -> Any:
        """A config field of this run (``rec.get("method.r")``)."""
        return get_path(self.config, dotted, default)

    @property
    def setting_hash(self) -> str:
        """Hash shared by the runs of one table cell (all fields but LR and seeds)."""
        return setting_hash(self.config)


def format_number(x: float | str) -> str:
    """Compact, stable text for a number in a folder name: 1e-2 -> '0.01', 1e-05 -> '1e-05'; the word
    ``auto`` (``optim.lr=auto``) stays as it is."""
    return x if x == "auto" else f"{float(x):g}"


def method_tag(cfg: Any) -> str:
    """'masking-r0.0001' for methods with a ratio, else the method name."""
    name = str(get_path(cfg, "method.name"))
    ratio = get_path(cfg, "method.ratio")
    return f"{name}-r{format_number(ratio)}" if ratio is not None else name


# Config fields that name a level of the run folder.
FOLDER_FIELDS = ("name", "model.name", "task.name", "method.name")


def folder_component(field: str, value: Any) -> str:
    """``value`` as one level of a run folder: a plain name, never a path. A value with a separator,
    ``.``/``..``, a leading ``~`` or a control character would write outside the results folder (or
    where tables and sweeps never look) and is refused in one line."""
    text = str(value)
    if (not text or text in (".", "..") or "/" in text or "\\" in text or text.startswith("~")
            or any(ord(c) < 32 for c in text)):
        raise RmpeftError(f"{field}={text!r} cannot name a run folder; expected a plain name "
                          f"(no '/', '\\', '..' or leading '~')")
    return text


def unhashed_run_dir(cfg: Any) -> Path:
    """The run folder without its identity-hash suffix (``.../seed<seed>``): :func:`run_dir` adds the
    hash; runs recorded before the hash existed were laid out here (``rmpeft-migrate`` moves them)."""
    parts = {f: folder_component(f, config_value(cfg, f)) for f in FOLDER_FIELDS}
    return (
        Path(str(config_value(cfg, "results_root")))
        / parts["name"]
        / parts["model.name"]
        / parts["task.name"]
        / folder_component("method", method_tag(cfg))
        / folder_component("optim.lr", f"lr{format_number(get_path(cfg, 'optim.lr'))}")
        / folder_component("seed", f"seed{config_value(cfg, 'seed')}")
    )


def run_dir(cfg: Any) -> Path:
    """The folder of the run described by ``cfg`` (a DictConfig or nested dict)."""
    unhashed = unhashed_run_dir(cfg)
    return unhashed.with_name(f"{unhashed.name}-{identity_hash(cfg)}")


def strict_json(value: Any, nulls: dict[str, str], path: str = "") -> Any:
    """``value`` with every NaN/infinite float replaced by None; the reasons go into ``nulls``."""
    if isinstance(value, float) and not math.isfinite(value):
        nulls[path] = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return None
    if isinstance(value, dict):
        return {k: strict_json(v, nulls, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v, nulls, f"{path}.{i}") for i, v in enumerate(value)]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:   # numpy / torch scalars
        return strict_json(value.item(), nulls, path)
    if isinstance(value, Path):
        return str(value)
    return value


def atomic_write_json(path: Path, data: Any) -> None:
    """Write strict JSON to ``path`` atomically: a reader sees the old or the new file, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"   # TypeError/ValueError before any write
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        share_like_umask(tmp, fd)   # mkstemp makes it private; a results folder may be shared
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def to_json_dict(record: RunRecord | dict[str, Any]) -> dict[str, Any]:
    """The record exactly as it is written: strict JSON, with ``nulls`` giving each null's reason."""
    data = record.to_dict() if isinstance(record, RunRecord) else dict(record)
    nulls: dict[str, str] = dict(data.get("nulls") or {})
    data = strict_json({k: v for k, v in data.items() if k != "nulls"}, nulls)
    if nulls:
        data["nulls"] = nulls
    return data


def write_record(folder: Path, record: RunRecord | dict[str, Any], name: str = RECORD_FILE) -> Path:
    """Write ``record`` (strict JSON, atomically) into ``folder`` as ``name``; returns the file's path."""
    path = Path(folder) / name
    atomic_write_json(path, to_json_dict(record))
    return path


def _record_path(folder_or_file: Path) -> Path:
    p = Path(folder_or_file)
    return p / RECORD_FILE if p.is_dir() or p.name != RECORD_FILE else p


def _reject_constant(name: str) -> float:
    return math.nan if name == "NaN" else (math.inf if name == "Infinity" else -math.inf)


def read_record(folder_or_file: Path) -> dict[str, Any] | None:
    """The record in a run folder (or at a record path) as a dict; None when there is none.

    A record that exists but cannot be parsed is an error naming the file: it is never silently
    treated as missing (which would rerun and overwrite it). NaN/Infinity written by older versions
    are read back as null.
    """
    p = _record_path(folder_or_file)
    if not p.exists():
        return None
    try:
        rec = json.loads(p.read_text(), parse_constant=_reject_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f"{e.msg} at line {e.lineno}" if isinstance(e, json.JSONDecodeError) else "not UTF-8 text"
        raise RmpeftError(f"corrupt run record {p}: {where}") from e
    except OSError as e:
        raise RmpeftError(f"unreadable run record {p}: {e.strerror}") from e
    if not isinstance(rec, dict) or rec.get("status") not in STATUSES:
        raise RmpeftError(f"corrupt run record {p}: missing or invalid 'status'")

    nulls: dict[str, str] = dict(rec.get("nulls") or {})
    rec = strict_json(rec, nulls)
    if nulls:
        rec["nulls"] = nulls
    return rec


def check_result(record: dict[str, Any], where: Path | str) -> None:
    """A ``finished`` record must hold a numeric ``test_metric`` (a finished run always measures one);
    one without cannot stand for a result and is reported, never skipped as done."""
    test = record.get("test_metric")
    if record.get("status") == "finished" and (isinstance(test, bool) or not isinstance(test, (int, float))):
        raise RmpeftError(f"invalid run record {where}: 'finished' without a numeric test_metric ({test!r}); "
                          f"force=true reruns it")


def load_record(folder_or_file: Path) -> RunRecord | None:
    """:func:`read_record` parsed into a :class:`RunRecord`."""
    data = read_record(folder_or_file)
    return None if data is None else RunRecord.from_dict(data)


def _parse_time(text: Any) -> datetime | None:
    try:
        when = datetime.fromisoformat(str(text))
    except (TypeError, ValueError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def is_stale(record: RunRecord | dict[str, Any], now: datetime | None = None,
             max_age_s: float = STALE_AFTER_S) -> bool:
    """True for a ``running`` record whose run no longer writes it: its last heartbeat (or, for
    records without one, its start) is older than ``max_age_s``. A run killed from outside (out of
    memory, SIGKILL, a cancelled job) cannot mark its own record failed; this tells it apart."""
    data = record.to_dict() if isinstance(record, RunRecord) else record
    if data.get("status") != "running":
        return False
    last = _parse_time(data.get("heartbeat_at") or data.get("started_at"))
    if last is None:   # no time to judge by (e.g. a hand-made record): not called stale
        return False
    now = now or datetime.now(timezone.utc)
    return (now - last).total_seconds() > max_age_s


def stale_reason(record: RunRecord | dict[str, Any]) -> str:
    """One line for a stale record's error."""
    data = record.to_dict() if isinstance(record, RunRecord) else record
    return f"stale: still 'running' but no heartbeat since {data.get('heartbeat_at') or data.get('started_at')} " \
           f"(killed from outside?)"


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
