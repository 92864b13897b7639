"""From run records to :class:`RunResult`: the facts aggregation needs, the run's table-cell identity,
duplicates, and the labels that keep different settings of one method apart.

A table cell groups runs by :class:`GroupKey` = (model, task, method, ratio, setting hash), where the
setting hash (:func:`rmpeft.records.setting_hash`) covers every result-changing config field except
the learning rate and seeds. Runs that differ in anything else (LoRA ``r``, ``trainer.epochs``, ...)
are never averaged together: they become separate rows, labelled by the fields in which their
settings differ (:func:`setting_variants`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from rmpeft.identity import differing_fields
from rmpeft.errors import RmpeftError
from rmpeft.methods import METHODS
from rmpeft.records import (
    DONE_STATUSES,
    RunRecord,
    get_path,
    is_stale,
    setting_hash,
    setting_identity,
    stale_reason,
)


class GroupKey(NamedTuple):
    """What one table cell aggregates over (its LRs and seeds)."""

    model: str
    task: str
    method: str
    ratio: float | None
    setting: str = ""


@dataclass(frozen=True)
class RunResult:
    """The facts of one run record that aggregation needs."""

    source: str                 # record path or wandb run path, for messages
    experiment: str             # config `name`
    model: str
    task: str
    method: str
    ratio: float | None
    lr: float
    seed: int
    status: str
    val: float | None
    test: float | None
    metric: str | None = None
    trainable_share: float | None = None
    error: str | None = None
    finished_at: str | None = None
    setting: str = ""           # setting hash: identity without LR and seeds
    protocol: str = "clean"     # config `protocol.name` (part of the setting)
    setting_tree: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    zero_shot: bool = False     # nothing trained (0 trainable parameters): the LR plays no part
    lr_auto: bool = False       # optim.lr=auto: ``lr`` is the predicted one (record key ``lr_auto``)
    wall_s: float | None = field(default=None, compare=False)   # the run's wall time (record ``wall_s``)
    git_commit: str | None = field(default=None, compare=False)  # the rmpeft commit that produced it

    @property
    def group(self) -> GroupKey:
        return GroupKey(self.model, self.task, self.method, self.ratio, self.setting)


def _float_or_none(x: Any) -> float | None:
    if x is None:
        return None
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def _first_line(text: Any) -> str | None:
    lines = str(text).strip().splitlines() if text is not None else []
    return lines[0] if lines else None


def _is_metric(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def run_from_record(record: RunRecord | dict[str, Any], source: str = "") -> RunResult:
    """Extract a :class:`RunResult` from a record; an error naming ``source`` if a key is missing, or
    if a ``finished`` record's validation or test metric is missing or not a number (an invalid record:
    neither a result nor a failure). A stale ``running`` record (:func:`rmpeft.records.is_stale`)
    counts as ``failed``.
    """
    rec = record if isinstance(record, RunRecord) else RunRecord.from_dict(record)
    missing = [k for k in ("model.name", "task.name", "method.name", "optim.lr") if rec.get(k) is None]
    if missing:
        raise RmpeftError(f"run record {source or '?'} lacks config key(s) {', '.join(missing)}")
    status = str(rec.status)
    if status == "finished":
        for key in ("val_metric", "test_metric"):
            value = getattr(rec, key)
            if not _is_metric(value):
                why = f"has no {key}" if value is None else f"has {key}={value!r}, not a number"
                raise RmpeftError(f"invalid run record {source or '?'}: status 'finished' but it {why}")
    val, test = _float_or_none(rec.val_metric), _float_or_none(rec.test_metric)
    error = rec.error
    if is_stale(rec):   # killed from outside: it will never finish
        status, error = "failed", stale_reason(rec)
    return RunResult(
        source=str(source),
        experiment=str(rec.get("name") or "default"),
        model=str(rec.get("model.name")),
        task=str(rec.get("task.name")),
        method=str(rec.get("method.name")),
        ratio=_float_or_none(rec.get("method.ratio")),
        lr=trained_lr(rec, source),
        seed=int(rec.get("seed") or 0),
        status=status,
        val=val,
        test=test,
        metric=rec.metric,
        trainable_share=_float_or_none(rec.trainable_share),
        error=_first_line(error),
        finished_at=rec.finished_at,
        setting=setting_hash(rec.config),
        protocol=str(rec.get("protocol.name") or "clean"),
        setting_tree=setting_identity(rec.config),
        zero_shot=_is_zero_shot(rec),
        lr_auto=rec.get("optim.lr") == "auto",
        wall_s=_float_or_none(rec.wall_s),
        git_commit=rec.git_commit,
    )


def trained_lr(rec: RunRecord, source: str = "") -> float:
    """The LR a run trained at: ``optim.lr``, or for ``optim.lr=auto`` the predicted one."""
    if rec.get("optim.lr") != "auto":
        return float(rec.get("optim.lr"))
    predicted = (rec.lr_auto or {}).get("lr")
    if not isinstance(predicted, (int, float)):
        raise RmpeftError(f"run record {source or '?'}: optim.lr=auto without a predicted lr (it ended before "
                          "the prediction)")
    return float(predicted)


def _is_zero_shot(rec: RunRecord) -> bool:
    """A run of a method that trains nothing (``method=none``): known from the method itself, so that a
    zero-shot run that failed before counting parameters is still one; methods this installation does not
    register are judged by their trainable count."""
    method = METHODS.get(str(rec.get("method.name")))
    return not method.trains if method is not None else rec.trainable_params == 0


def runs_from_records(pairs: Iterable[tuple[Any, RunRecord | dict[str, Any]]]) -> list[RunResult]:
    """Runs from ``(source, record)`` pairs (records as :class:`RunRecord` or dicts)."""
    return [run_from_record(rec, str(src)) for src, rec in pairs]


def dedupe(runs: Iterable[RunResult]) -> list[RunResult]:
    """One run per (experiment, group, lr, seed): a done run beats a failed or running one, then the
    latest ``finished_at`` wins. Duplicates arise from reruns logged to wandb or overlapping roots."""
    best: dict[tuple, RunResult] = {}
    for r in runs:
        key = (r.experiment, r.group, r.lr, r.seed)
        rank = (r.status in DONE_STATUSES, r.finished_at or "", r.source)
        old = best.get(key)
        if old is None or rank > (old.status in DONE_STATUSES, old.finished_at or "", old.source):
            best[key] = r
    return list(best.values())


def check_single_experiment(runs: Iterable[RunResult]) -> None:
    """Refuse to pool a cell's runs across experiments (same setting under two names)."""
    seen: dict[GroupKey, set[str]] = defaultdict(set)
    for r in runs:
        seen[r.group].add(r.experiment)
    for key, names in seen.items():
        if len(names) > 1:
            raise RmpeftError(
                f"runs of {key.model}/{key.task}/{key.method}"
                f"{'' if key.ratio is None else f' ratio {key.ratio:g}'} come from several experiments "
                f"({', '.join(sorted(names))}); select one with --name"
            )


# --------------------------------------------------------------------------------------------------
# Settings: which fields keep two rows of one method apart.


def _value_text(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _short(path: str) -> str:
    return path[len("method."):] if path.startswith("method.") else path


@dataclass
class Settings:
    """The settings found for each (model, method, ratio, task) and how they differ."""

    variant: dict[GroupKey, str | None]         # cell -> label such as 'r=16' (None: the only setting)
    differing: dict[tuple, list[str]]           # (model, method, ratio, task) -> differing fields, if mixed


def setting_variants(runs: Iterable[RunResult]) -> Settings:
    """Label every cell by the fields in which its setting differs from the other settings of the same
    model and method (over all tasks, so the rows line up); ``task.*`` fields only where they differ
    on one task. Settings are compared within one protocol; a protocol other than ``clean`` leads the
    label (``protocol=paper, r=16``), so rows of different protocols never mix."""
    by_protocol: dict[str, list[RunResult]] = defaultdict(list)
    for r in runs:
        by_protocol[r.protocol].append(r)
    merged = Settings({}, {})
    for protocol, members in by_protocol.items():
        found = variants_of((r.model, r.method, r.ratio, r.task, r.setting, r.setting_tree) for r in members)
        tag = None if protocol == "clean" else f"protocol={protocol}"
        for key, text in found.variant.items():
            merged.variant[key] = ", ".join(t for t in (tag, text) if t) or None
        for key, fields_ in found.differing.items():
            merged.differing[key] = sorted(set(merged.differing.get(key, [])) | set(fields_))
    return merged


def variants_of(entries: Iterable[tuple[str, str, float | None, str, str, dict[str, Any]]]) -> Settings:
    """:func:`setting_variants` on ``(model, method, ratio, task, setting hash, setting tree)`` entries."""
    trees: dict[tuple, dict[str, dict[str, Any]]] = defaultdict(dict)
    for model, method, ratio, task, h, tree in entries:
        trees[(model, method, ratio, task)][h] = tree
    differing: dict[tuple, list[str]] = {}
    varying: dict[tuple, set[str]] = defaultdict(set)
    for key, by_hash in trees.items():
        if len(by_hash) < 2:
            continue
        first, *others = by_hash.values()
        fields_ = sorted({f for t in others for f in differing_fields(first, t)})
        differing[key] = fields_
        varying[key[:3]].update(f for f in fields_ if not f.startswith("task."))
    variant: dict[GroupKey, str | None] = {}
    for key, by_hash in trees.items():
        paths = sorted(varying.get(key[:3], set()) | {f for f in differing.get(key, []) if f.startswith("task.")})
        for h, tree in by_hash.items():
            text = ", ".join(f"{_short(p)}={_value_text(get_path(tree, p))}" for p in paths)
            variant[GroupKey(key[0], key[3], key[1], key[2], h)] = text or None
    return Settings(variant, differing)
