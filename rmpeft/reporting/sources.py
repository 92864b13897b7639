"""Where run records come from: results folders on disk, or a wandb project mirrored by
``logger=wandb`` (read back into the same :class:`~rmpeft.records.RunRecord` schema).

Records written before the run identity existed carry no identity: it is computed from their
stored config when they are parsed (:meth:`RunRecord.from_dict`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from rmpeft.errors import RmpeftError
from rmpeft.loggers import HISTORY_EPOCH, HISTORY_TRAIN_LOSS, HISTORY_VAL_METRIC
from rmpeft.records import RECORD_FILE, STATUSES, RunRecord, read_record

SOURCES_HELP = "'disk' (default) or wandb:ENTITY/PROJECT"

# wandb run states of runs that never logged an rmpeft summary.
_STATE_TO_STATUS = {"running": "running", "pending": "running", "finished": "failed",
                    "crashed": "failed", "failed": "failed", "killed": "failed", "preempted": "failed"}


def load_records(roots: Sequence[str | Path], source: str | None = None, api: Any = None,
                 history: bool = False, report: Callable[[str], None] | None = None) -> list[tuple[str, RunRecord]]:
    """``(source, record)`` pairs from results folders, or from ``wandb:ENTITY/PROJECT``.

    ``api`` replaces ``wandb.Api()`` (tests); ``history`` also fetches each wandb run's per-epoch curves.
    A record file that cannot be read is an error, or with ``report`` is passed to it (one line: its path
    and why) and left out.
    """
    if source and source != "disk":
        if not source.startswith("wandb:"):
            raise RmpeftError(f"unknown source '{source}'; valid: disk, wandb:ENTITY/PROJECT")
        return records_from_wandb(source[len("wandb:"):], api=api, history=history)
    missing = [str(r) for r in roots if not Path(r).is_dir()]
    if missing:
        raise RmpeftError(f"results folder not found: {', '.join(missing)}")
    out = []
    for root in roots:
        for path in sorted(Path(root).rglob(RECORD_FILE)):
            try:
                rec = read_record(path)
                if rec is not None:
                    out.append((str(path), _parse(rec, path)))
            except RmpeftError as e:
                if report is None:
                    raise
                report(str(e))
    return out


def _parse(rec: dict[str, Any], path: Path) -> RunRecord:
    try:
        return RunRecord.from_dict(rec)
    except (TypeError, ValueError, AttributeError) as e:   # a key of the wrong type (edited by hand)
        raise RmpeftError(f"invalid run record {path}: {type(e).__name__}: {e}") from None


# --------------------------------------------------------------------------------------------------
# Reading runs back from a wandb project.


def _unflatten(config: dict[str, Any]) -> dict[str, Any]:
    """Nested dict from a wandb config whose keys may be dotted (``model.name``) or nested."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if str(key).startswith("_wandb"):
            continue
        if isinstance(value, dict) and set(value) <= {"value", "desc"} and "value" in value:
            value = value["value"]                   # raw API form {"value": ..., "desc": ...}
        node = out
        parts = str(key).split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]].update(_unflatten(value))
        else:
            node[parts[-1]] = _unflatten(value) if isinstance(value, dict) else value
    return out


def _summary_dict(run: Any) -> dict[str, Any]:
    summary = getattr(run, "summary_metrics", None)
    if summary is None:
        summary = getattr(run, "summary", None) or {}
    if not isinstance(summary, dict):
        summary = {k: summary[k] for k in summary.keys()}
    return dict(summary)


def _history(run: Any) -> list[dict[str, Any]]:
    rows = run.scan_history(keys=[HISTORY_EPOCH, HISTORY_TRAIN_LOSS, HISTORY_VAL_METRIC])
    epochs = []
    for row in rows:
        if row.get(HISTORY_EPOCH) is None:
            continue
        epochs.append({"epoch": int(row[HISTORY_EPOCH]), "train_loss": row.get(HISTORY_TRAIN_LOSS),
                       "val_metric": row.get(HISTORY_VAL_METRIC)})
    return sorted(epochs, key=lambda e: e["epoch"])


def record_from_wandb_run(run: Any, history: bool = False) -> dict[str, Any]:
    """A record dict rebuilt from one wandb run logged by :class:`rmpeft.loggers.WandbLogger`.

    The status is the one logged in the summary; a run that never logged one (crashed, killed, or
    still running) gets ``failed`` or ``running`` from its wandb state.
    """
    summary = _summary_dict(run)
    record = {k: v for k, v in summary.items() if not str(k).startswith("_")}
    for k in (HISTORY_EPOCH, HISTORY_TRAIN_LOSS, HISTORY_VAL_METRIC):
        record.pop(k, None)
    if record.get("status") not in STATUSES:
        state = str(getattr(run, "state", "") or "")
        record["status"] = _STATE_TO_STATUS.get(state, "failed")
        record.setdefault("error", f"wandb run state '{state}' without an rmpeft summary")
    record["config"] = _unflatten(dict(getattr(run, "config", {}) or {}))
    record.setdefault("finished_at", getattr(run, "created_at", None))
    record["epochs"] = _history(run) if history else []
    return record


def records_from_wandb(
    path: str, api: Any = None, history: bool = False, filters: dict[str, Any] | None = None
) -> list[tuple[str, RunRecord]]:
    """``(source, record)`` pairs for every run of the wandb project ``ENTITY/PROJECT``.

    ``api`` is a ``wandb.Api()``-like object (injectable for tests); ``history`` also fetches each
    run's per-epoch curves (one request per run).
    """
    if path.count("/") != 1 or not all(path.split("/")):
        raise RmpeftError(f"bad wandb source '{path}'; expected ENTITY/PROJECT")
    if api is None:
        try:
            import wandb

            api = wandb.Api(timeout=60)
        except Exception as e:  # noqa: BLE001 - surfaced as one user-facing line
            raise RmpeftError(f"cannot open the wandb API for {path}: {type(e).__name__}: {e}") from e
    kwargs = {"filters": filters} if filters else {}
    try:
        try:  # full data in paged queries, not one request per run (older wandb has no `lazy`)
            runs: Iterable[Any] = api.runs(path, lazy=False, **kwargs)
        except TypeError:
            runs = api.runs(path, **kwargs)
        return [(f"wandb:{path}/{run.id}", RunRecord.from_dict(record_from_wandb_run(run, history=history)))
                for run in runs]
    except RmpeftError:
        raise
    except Exception as e:  # noqa: BLE001
        raise RmpeftError(f"cannot read wandb project {path}: {type(e).__name__}: {e}".splitlines()[0]) from e
