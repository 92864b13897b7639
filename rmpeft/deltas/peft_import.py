"""peft adapter folders as deltas: ``rmpeft-eval`` and ``rmpeft-merge`` read them.

Two kinds of folder are read:

* a folder ``rmpeft-export --format peft`` wrote (it holds ``rmpeft.json``): the run it came from is
  known, so it evaluates exactly as the rmpeft delta does, and its base fingerprint is checked; the
  adapter files must match the checksums in ``rmpeft.json``;
* a SHiRA or Super-Tuning adapter trained anywhere else (no ``rmpeft.json``): its entries become a
  Random Masking delta (``method=masking``, ratio = entries / base parameters). The config is composed
  from the command line's overrides as ``rmpeft-train`` composes one; the model is the ``conf/model``
  whose ``name_or_path`` is the adapter's ``base_model_name_or_path`` unless ``model=`` names one, and
  a model other than the adapter's base is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from rmpeft.config import CONF_DIR, compose_config
from rmpeft.base_model import base_fingerprint
from rmpeft.methods.delta_format import FORMAT, META_FILE, Delta, delta_fingerprint, file_sha256, open_delta
from rmpeft.deltas.peft_export import EXPORT_FILE, EXPORT_FORMAT, EXPORT_VERSION, SPARSE_METHODS
from rmpeft.methods.peft_sparse import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    Entries,
    check_sparse_config,
    linear_shapes,
    read_adapter,
    read_config,
)
from rmpeft.errors import RmpeftError
from rmpeft.models import build_model_on_meta, count_parameters, model_source
from rmpeft.sparse import index_dtype


@dataclass
class AdapterDelta(Delta):
    """A delta read from a peft adapter folder; ``tensors()`` gives its entries as a masking delta's
    ``<q>.values`` / ``<q>.positions``. ``composed``: its run config was composed from the command line
    (an adapter trained elsewhere), so the overrides are already in it."""

    converted: dict[str, torch.Tensor] = field(default_factory=dict)
    composed: bool = False

    def tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.converted)


def is_adapter_folder(path: Path | str) -> bool:
    """A peft adapter folder (``adapter_config.json``) that is not an rmpeft delta (``delta.json``)."""
    folder = Path(path)
    return (folder / CONFIG_FILE).is_file() and not (folder / META_FILE).is_file()


def open_any(path: Path | str, overrides: list[str] | None = None) -> Delta:
    """An rmpeft delta folder, or a peft adapter folder read as one (``overrides`` compose the config of
    an adapter trained elsewhere)."""
    if is_adapter_folder(path):
        return open_adapter(path, overrides or [])
    return open_delta(path)


def _as_tensors(entries: dict[str, Entries]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for q, e in entries.items():
        out[f"{q}.values"] = e.values
        out[f"{q}.positions"] = e.positions.to(index_dtype(e.numel))
    return out


def _layout(entries: dict[str, Entries], backend: Any) -> dict[str, Any]:
    return {"layout": "values_positions", "shapes": {q: list(e.shape) for q, e in entries.items()},
            "backend": None if backend == "columns" else backend, "entries": sum(e.count for e in entries.values())}


def _check_files(folder: Path, files: dict[str, dict[str, Any]]) -> None:
    for name, facts in files.items():
        f = folder / name
        if not f.is_file():
            raise RmpeftError(f"corrupt adapter {folder}: {name} is missing")
        if f.stat().st_size != facts["bytes"] or file_sha256(f) != facts["sha256"]:
            raise RmpeftError(f"adapter {folder}: {name} does not match its SHA-256 in {EXPORT_FILE} (modified "
                              f"after export? delete {EXPORT_FILE} to read it as an adapter trained elsewhere)")


def open_adapter(path: Path | str, overrides: list[str]) -> AdapterDelta:
    """Read a peft adapter folder as a delta (see the module docstring)."""
    folder = Path(path)
    if not (folder / CONFIG_FILE).is_file():
        raise RmpeftError(f"{folder} is not a peft adapter: {CONFIG_FILE} not found")
    if (folder / EXPORT_FILE).is_file():
        return _open_exported(folder)       # its overrides go through eval_config, as a delta's do
    return _open_foreign(folder, overrides)


def _open_exported(folder: Path) -> AdapterDelta:
    try:
        meta = json.loads((folder / EXPORT_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RmpeftError(f"corrupt adapter {folder}: {EXPORT_FILE} is not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT or not isinstance(meta.get("delta"), dict):
        raise RmpeftError(f"corrupt adapter {folder}: {EXPORT_FILE} is not an {EXPORT_FORMAT} file")
    if int(meta.get("format_version", 0)) > EXPORT_VERSION:
        raise RmpeftError(f"adapter {folder} has format_version {meta['format_version']}; this rmpeft reads up to "
                          f"{EXPORT_VERSION}")
    _check_files(folder, meta.get("files") or {})
    src = meta["delta"]
    files = meta["files"]
    out = {**src, "format": FORMAT, "files": files, "bytes": sum(f["bytes"] for f in files.values()),
           "adapter": meta.get("adapter"), "source_fingerprint": src.get("fingerprint")}
    out["fingerprint"] = delta_fingerprint(src["method"], src["base"]["fingerprint"], files)
    converted: dict[str, torch.Tensor] = {}
    if src["method"] in SPARSE_METHODS:
        shapes = (src.get("delta") or {}).get("shapes") or {}
        _, entries = read_adapter(folder, lambda q: tuple(shapes[q]) if q in shapes else None)
        converted = _as_tensors(entries)
        out["delta"] = _layout(entries, (src.get("delta") or {}).get("backend"))
    else:
        found = str(read_config(folder).get("peft_type"))
        if found != str((meta.get("adapter") or {}).get("peft_type")):
            raise RmpeftError(f"adapter {folder} has peft_type {found}, but {EXPORT_FILE} says "
                              f"{(meta.get('adapter') or {}).get('peft_type')}")
    return AdapterDelta(folder, out, converted=converted)


def _model_choice(base: str | None) -> str | None:
    """The ``conf/model`` choice whose ``name_or_path`` is ``base``."""
    if not base:
        return None
    for path in sorted((CONF_DIR / "model").glob("*.yaml")):
        if OmegaConf.load(path).get("name_or_path") == base:
            return path.stem
    return None


def _same_path(a: str, b: str) -> bool:
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def _fits(cfg: Any, base: str) -> bool:
    """Whether the config's model is the adapter's base (same hub id or the same folder)."""
    here = (cfg.model.get("name_or_path"), model_source(cfg.model, str(cfg.cache_dir)))
    return any(_same_path(base, str(s)) for s in here if s)


def _open_foreign(folder: Path, overrides: list[str]) -> AdapterDelta:
    config = read_config(folder)
    check_sparse_config(config, str(folder))
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+")
        if key == "method" or key.startswith("method."):
            raise RmpeftError(f"override '{item}': the method and its config come from the adapter")
    base = config.get("base_model_name_or_path")
    cfg = compose_config([*overrides, "method=masking"])
    named = any(o.split("=", 1)[0].lstrip("+") == "model" for o in overrides)
    if base and not named and not _fits(cfg, str(base)) and _model_choice(str(base)):
        cfg = compose_config([f"model={_model_choice(str(base))}", *overrides, "method=masking"])
    if base and not _fits(cfg, str(base)):
        raise RmpeftError(f"adapter {folder} was trained on base model '{base}', not on '{cfg.model.name}' at "
                          f"{model_source(cfg.model, str(cfg.cache_dir))}; pass model=<name> (and "
                          "model.name_or_path=<its base>) naming its own base model")
    OmegaConf.set_struct(cfg, False)
    cache_dir = str(cfg.cache_dir)
    meta_model = build_model_on_meta(cfg.model)
    _, entries = read_adapter(folder, linear_shapes(meta_model))
    total = count_parameters(meta_model)
    count = sum(e.count for e in entries.values())
    cfg.method.ratio = count / total
    cfg.method.target_modules = sorted({q.rsplit(".", 1)[-1] for q in entries})
    resolved = OmegaConf.to_container(cfg, resolve=True)
    files = {n: {"bytes": (folder / n).stat().st_size, "sha256": file_sha256(folder / n)}
             for n in (CONFIG_FILE, WEIGHTS_FILE)}
    fingerprint = base_fingerprint(cfg.model, cache_dir)
    adapter = {"peft_type": config["peft_type"], "r": config.get("r"), "sparsity": config.get("sparsity"),
               "entries": count, "modules": len(entries), "trained_elsewhere": True}
    meta = {"format": FORMAT, "method": "masking", "method_config": resolved["method"],
            "method_state": {"adapter": adapter, "k": count, "total_params": total},
            "delta": _layout(entries, "auto"), "base": {**fingerprint, "model_config": resolved["model"]},
            "run": {"identity_hash": None, "run_dir": None, "metric": resolved["task"].get("metric"),
                    "best_epoch": None, "val_metric": None, "test_metric": None, "trainable_params": count,
                    "total_params": total, "config": resolved},
            "adapter": adapter, "files": files, "bytes": sum(f["bytes"] for f in files.values())}
    meta["fingerprint"] = delta_fingerprint("masking", fingerprint["fingerprint"], files)
    return AdapterDelta(folder, meta, converted=_as_tensors(entries), composed=True)
