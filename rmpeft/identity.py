"""Run identity: which config fields determine a run's result.

Two configs with the same identity describe the same run (a relaunch is skipped); any difference in
a result-changing field makes a different run with its own folder, so a finished result is never
reused for a config that differs from it.

The identity is the fully resolved config minus the fields that cannot change a result
(:data:`EXCLUDED`). New fields are therefore part of the identity by default. A field added later
whose default reproduces the old behaviour is listed in :data:`NEUTRAL_DEFAULTS`: at that value it
is left out, so runs recorded before it existed keep their identity.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rmpeft.errors import RmpeftError

# Dotted paths that never change a result: where things are written, how progress is shown, how
# evaluation is batched, what is mirrored to wandb, where jobs run; and the parts that only build
# `task.data_dir` (experiment=cpu-repro), whose resolved value stays in the identity.
EXCLUDED: tuple[str, ...] = (
    "hydra",
    "force",
    "results_root",
    "cache_dir",
    "name",
    "logger",
    "cluster",
    "resources",
    "trainer.progress",
    "trainer.eval_batch_size",
    "trainer.eval_max_tokens",
    "trainer.train_max_tokens",     # splits a training micro-batch; the gradient is the same up to float order
    "trainer.gradient_checkpointing",   # recomputes activations in the backward pass; the same numbers
    "trainer.save_trainable",
    "trainer.save_delta",
    "trainer.resume",
    "data_root",
    "official_folders",
    "one_file_tasks",               # only builds task.test_pool_share (experiment=cpu-study), which stays in
    "model.paper_first_token_id",   # only feeds model.first_token_id under protocol=paper (which stays in)
    "model.gguf.install",           # the install hint printed when the GGUF package is missing
    "model.dtype",                  # no longer a field (precision is trainer.precision); older records have it
    "trainer.eval_every_epoch",     # no longer a field (validation runs after every epoch); older records have it
)

# Fields introduced after records existed, at the value that reproduces the earlier behaviour.
NEUTRAL_DEFAULTS: dict[str, Any] = {
    "protocol.name": "clean",
    "trainer.select_epoch_by": "val_metric",
    "task.objective": "classification",
    "model.first_token_id": None,
    "method.layout": "pooled",
    "method.layer_norm_biases": False,
    "method.reallocate": True,
    "trainer.nonfinite_steps": "stop",
    "task.test_pool_share": None,
    "method.down_bias_init": "zero",
    "method.init_from": None,
    "task.train_augment": "none",
    # Run options added later (excluded from the identity): how a config recorded before them runs.
    "trainer.resume": True,
    "trainer.gradient_checkpointing": False,
    "trainer.train_max_tokens": None,
}

# Fields that vary inside one table cell (a grid point or a repetition), not between settings.
PER_RUN: tuple[str, ...] = ("optim.lr", "seed", "data_seed")

# Hex digits kept of a SHA-256: a run's identity and setting hashes (a run folder's suffix), and the
# fingerprints of files (base models, deltas, the entries a masking run starts from).
IDENTITY_HASH_CHARS = 10
FINGERPRINT_CHARS = 16


def as_dict(cfg: Any) -> dict[str, Any]:
    """A resolved plain-dict copy of a DictConfig or nested mapping."""
    if isinstance(cfg, DictConfig):
        if "hydra" in cfg:   # Hydra's own node resolves only inside a running job; it never matters here
            cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return {k: copy.deepcopy(v) for k, v in dict(cfg).items() if k != "hydra"}


def get_path(cfg: Any, dotted: str, default: Any = None) -> Any:
    """``cfg["a"]["b"]`` for ``"a.b"`` on dicts or DictConfigs; ``default`` when any part is missing."""
    node = cfg
    for part in dotted.split("."):
        if node is None:
            return default
        node = node.get(part) if hasattr(node, "get") else getattr(node, part, None)
    return default if node is None else node


def config_value(cfg: Any, dotted: str, group: str = "") -> Any:
    """The value of field ``dotted`` of a run config (``cfg``; with ``group``, e.g. ``"task"``, ``cfg``
    is that group of it). A field missing from a config recorded before it existed reads as its
    neutral default (:data:`NEUTRAL_DEFAULTS`); any other missing field is a one-line error naming it
    (defaults live in ``conf/``, never here)."""
    node = cfg
    for part in dotted.removeprefix(f"{group}.").split(".") if group else dotted.split("."):
        if not hasattr(node, "get") or part not in node:
            if dotted in NEUTRAL_DEFAULTS:
                return NEUTRAL_DEFAULTS[dotted]
            raise RmpeftError(f"{dotted} is missing from the config; expected it from conf/ (or the run's record)")
        node = node[part]
    return node


def _lookup(tree: dict[str, Any], dotted: str) -> Any:
    """The value at ``dotted`` (``None`` included), or a missing marker."""
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _drop(tree: dict[str, Any], dotted: str) -> Any:
    *parents, leaf = dotted.split(".")
    node: Any = tree
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return None
    return node.pop(leaf, None) if isinstance(node, dict) else None


def canonical_numbers(value: Any) -> Any:
    """``value`` with every integral float written as an int (``1.0`` -> ``1``, ``1e4`` -> ``10000``), so
    that the spellings of one number on a command line or in a yaml file give one identity."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2 ** 53:
        return int(value)
    if isinstance(value, dict):
        return {k: canonical_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [canonical_numbers(v) for v in value]
    return value


def run_identity(cfg: Any) -> dict[str, Any]:
    """The result-changing part of a run's config (a DictConfig or the dict stored in a record).

    Numbers are canonical (:func:`canonical_numbers`); local data counts by its content
    (``task.data_fingerprint``, set by :func:`rmpeft.resolve.resolve_run_config`), not by its path,
    except in records written before fingerprints, where the path is all there is."""
    tree = canonical_numbers(as_dict(cfg))
    if _lookup(tree, "task.data_fingerprint") not in (_MISSING, None):
        _drop(tree, "task.data_dir")
    if _lookup(tree, "method.init_fingerprint") not in (_MISSING, None):
        _drop(tree, "method.init_from")
    if _lookup(tree, "optim.lr") != "auto":   # the settings of a predicted LR play no part in a given one
        _drop(tree, "optim.lr_auto")
    for path in EXCLUDED:
        _drop(tree, path)
    for path, neutral in NEUTRAL_DEFAULTS.items():
        if _lookup(tree, path) == neutral:
            _drop(tree, path)
            parent = path.rpartition(".")[0]
            if parent and _lookup(tree, parent) == {}:  # a group that holds only neutral fields
                _drop(tree, parent)
    return tree


def setting_identity(cfg: Any) -> dict[str, Any]:
    """The identity without the learning rate and seeds: what runs of one table cell share."""
    tree = run_identity(cfg)
    for path in PER_RUN:
        _drop(tree, path)
    return tree


def digest(tree: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able tree (key order does not matter)."""
    text = json.dumps(tree, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:IDENTITY_HASH_CHARS]


def identity_hash(cfg: Any) -> str:
    """Hash of :func:`run_identity`: the last part of the run folder's name."""
    return digest(run_identity(cfg))


def setting_hash(cfg: Any) -> str:
    """Hash of :func:`setting_identity`: runs that may be aggregated together share it."""
    return digest(setting_identity(cfg))


def differing_fields(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths whose values differ between two identity trees (sorted)."""
    out: list[str] = []
    for key in sorted(set(a) | set(b)):
        path = f"{prefix}{key}"
        va, vb = a.get(key, _MISSING), b.get(key, _MISSING)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += differing_fields(va, vb, path + ".")
        elif va != vb:
            out.append(path)
    return out


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()
