"""Evaluating a delta without training (``rmpeft-eval DELTA [overrides]``).

The config is the delta's own run config (same model, data sample, evaluation settings), changed by the
overrides: ``task=<name>`` (or ``model=<name>``) swaps that whole config group as ``rmpeft-train``
composes it, ``a.b=value`` sets one field (a field the config does not have is refused). The method
always comes from the delta. Where files are written is never the delta's: ``results_root``,
``cache_dir`` and ``force`` are this installation's defaults (``conf/train.yaml``, a site's
``conf/local``) unless the command line sets them. The record is an ordinary run record in its own
folder: its config gains ``evaluation.delta`` (the delta's content hash, computed from its bytes, so
evaluations of different deltas never share a folder), its experiment name defaults to
``<run name>-eval``, and its ``delta`` field says which delta was evaluated (``"evaluated": true``).
Validation and test metrics are measured on the run's validation and test examples; nothing trains.
"""

from __future__ import annotations

import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rmpeft.config import (
    check_choices,
    compose_config,
    field_paths,
    is_open,
    unknown_field,
)
from rmpeft.deltas.apply import build_delta_run
from rmpeft.errors import RmpeftError
from rmpeft.evaluation import evaluate
from rmpeft.lifecycle import RecordedRun, fill_sizes
from rmpeft.methods.delta_format import Delta

SWAPPABLE_GROUPS = ("task", "model", "logger", "cluster", "resources")
# Fields that say where and whether files are written: always this installation's (or the command line's).
CALLER_FIELDS = ("results_root", "cache_dir", "force")
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _split(overrides: list[str]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """(group swaps, ``(field, override)`` pairs) of the overrides."""
    groups: dict[str, str] = {}
    fields: list[tuple[str, str]] = []
    for item in overrides:
        if "=" not in item:
            raise RmpeftError(f"override '{item}' is not key=value")
        key, value = item.split("=", 1)
        key = key.lstrip("+")
        if key == "method" or key.startswith("method."):
            raise RmpeftError(f"override '{item}': the method and its config come from the delta")
        if "." in key or key not in SWAPPABLE_GROUPS:
            fields.append((key, item))
        else:
            groups[key] = value
    return groups, fields


def eval_config(delta: Delta, overrides: list[str]) -> DictConfig:
    """The config of an evaluation of ``delta``: its run config changed by ``overrides``, written where
    this installation (or the command line) says."""
    check_choices(overrides, SWAPPABLE_GROUPS)
    groups, fields = _split(overrides)
    cfg = OmegaConf.create(delta.run_config)
    OmegaConf.set_struct(cfg, False)
    protocol = str((cfg.get("protocol") or {}).get("name", "clean"))   # the delta's protocol settings follow
    composed = compose_config([f"{g}={v}" for g, v in groups.items()]
                              + [f"method={delta.method}", f"protocol={protocol}"])
    for group in groups:
        cfg[group] = OmegaConf.to_container(composed[group], resolve=True)
    if not getattr(delta, "composed", False):   # (an adapter's config composed from this command line is the caller's)
        for key in CALLER_FIELDS:
            cfg[key] = OmegaConf.select(composed, key)
    name = str(cfg.get("name") or "")
    cfg.name = f"{name if PLAIN_NAME.fullmatch(name) else composed.name}-eval"
    known = field_paths(cfg)
    for key, item in fields:
        if key not in known and not is_open(key):
            raise unknown_field(key, item, known)
    if fields:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([f"{key}={item.split('=', 1)[1]}" for key, item in fields]))
    cfg.method = delta.method_config
    cfg.evaluation = {"delta": delta.content_hash}
    return cfg


def evaluate_delta(delta: Delta, cfg: DictConfig) -> dict[str, Any]:
    """Apply ``delta`` to its base model, measure validation and test metrics, write the record
    (:class:`rmpeft.lifecycle.RecordedRun`: skipped when already a result, unless ``force=true``)."""
    recorded = RecordedRun(cfg, resolve=False, delta={
        "path": str(delta.path), "bytes": delta.bytes, "fingerprint": delta.fingerprint,
        "content_hash": delta.content_hash, "evaluated": True})
    if recorded.done is not None:
        return recorded.done
    with recorded as rec:
        run = build_delta_run(delta, recorded.cfg, recorded.accelerator)
        run.handle.model = recorded.accelerator.prepare_model(run.handle.model, evaluation_mode=True)
        fill_sizes(rec, run)
        if run.splits["validation"]:
            rec.val_metric = evaluate(run, run.splits["validation"], desc="validation")
        rec.test_metric = evaluate(run, run.splits["test"], desc="test")
        rec.method_state = run.handle.state_for_record()
        rec.status = "finished"
    return recorded.result
