"""Deltas of Random and Structured Masking: the trained values and where they sit.

Per wrapped layer ``<q>`` (its qualified module name), ``delta.safetensors`` holds:

* :class:`MaskedLinear` (Random Masking, per-matrix Structured Masking): ``<q>.values`` (fp32, the
  trained entries) and ``<q>.positions`` (int32 flat row-major positions in the weight): 8 bytes an entry;
* :class:`ColumnMaskedLinear` (pooled Structured Masking): ``<q>.values`` (out_features x columns) and
  ``<q>.columns`` (int32 column indices).

Applying a delta wraps the same layers at the stored positions (no mask is re-drawn); merging adds the
values into the weights and puts plain ``nn.Linear`` layers back.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rmpeft.methods.delta_format import Delta, file_sha256, write_tensors
from rmpeft.methods.peft_sparse import CONFIG_FILE, WEIGHTS_FILE, Entries, delta_entries, linear_shapes, read_adapter
from rmpeft.errors import RmpeftError
from rmpeft.identity import FINGERPRINT_CHARS
from rmpeft.methods.base import MethodContext, freeze_all
from rmpeft.sparse import ColumnMaskedLinear, MaskedLinear, index_dtype, patch, select_backend, unpatch


def export_masked(layers: dict[str, nn.Module], folder: Path, method: str, backend: str | None) -> dict[str, Any]:
    """Write the values and positions (or columns) of every wrapped layer; return the layout facts."""
    tensors: dict[str, torch.Tensor] = {}
    shapes: dict[str, list[int]] = {}
    for qname, layer in layers.items():
        tensors[f"{qname}.values"] = layer.values.detach().float()
        if isinstance(layer, ColumnMaskedLinear):
            tensors[f"{qname}.columns"] = layer.columns.to(torch.int32)
        else:
            tensors[f"{qname}.positions"] = layer.index.to(index_dtype(layer.weight.numel()))
        shapes[qname] = [layer.out_features, layer.in_features]
    write_tensors(folder, tensors, method)
    return {"layout": "values_positions", "shapes": shapes, "backend": backend,
            "entries": sum(layer.values.numel() for layer in layers.values())}


def _target(model: nn.Module, qname: str, shape: list[int], where: str) -> nn.Linear:
    try:
        lin = model.get_submodule(qname)
    except AttributeError:
        raise RmpeftError(f"delta {where} does not fit the model: it has no module {qname}") from None
    if not isinstance(lin, nn.Linear) or [lin.out_features, lin.in_features] != list(shape):
        raise RmpeftError(f"delta {where} does not fit the model: {qname} is not a {shape[0]}x{shape[1]} linear layer")
    return lin


def _backend(delta: Delta, model: nn.Module, ctx: MethodContext, shapes: list, counts: list[int]):
    """The backend the run trained with when it is available here, else the fastest one."""
    first = next(model.parameters())
    device = first.device if first.device.type != "cpu" else torch.device(ctx.device)
    requested = str(delta.meta.get("delta", {}).get("backend") or "auto")
    autotune = bool(delta.method_config.get("autotune", True))
    try:
        return select_backend(requested, device, shapes, counts, first.dtype, autotune=autotune)[0]
    except (RmpeftError, RuntimeError, ImportError):
        return select_backend("auto", device, shapes, counts, first.dtype, autotune=autotune)[0]


def apply_masked(model: nn.Module, delta: Delta, ctx: MethodContext) -> dict[str, nn.Module]:
    """Freeze ``model`` and wrap the delta's layers with its trained values; returns the wrappers."""
    freeze_all(model)
    tensors = delta.tensors()
    shapes: dict[str, list[int]] = delta.meta.get("delta", {}).get("shapes", {})
    where = str(delta.path)
    targets = {q: _target(model, q, shape, where) for q, shape in shapes.items()}
    point = [q for q in shapes if f"{q}.positions" in tensors]
    backend = _backend(delta, model, ctx, [tuple(shapes[q]) for q in point],
                       [tensors[f"{q}.positions"].numel() for q in point]) if point else None
    layers: dict[str, nn.Module] = {}
    for qname, lin in targets.items():
        values = tensors.get(f"{qname}.values")
        if values is None:
            raise RmpeftError(f"corrupt delta {where}: {qname}.values is missing")
        if qname in point:
            layer = MaskedLinear(lin, tensors[f"{qname}.positions"].to(index_dtype(lin.weight.numel())), backend)
        elif f"{qname}.columns" in tensors:
            layer = ColumnMaskedLinear(lin, tensors[f"{qname}.columns"])
        else:
            raise RmpeftError(f"corrupt delta {where}: {qname} has neither positions nor columns")
        if tuple(layer.values.shape) != tuple(values.shape):
            raise RmpeftError(f"corrupt delta {where}: {qname}.values has shape {tuple(values.shape)}, "
                              f"expected {tuple(layer.values.shape)}")
        layer.values.data = values.to(lin.weight.device)
        layers[qname] = layer
    patch(model, layers)
    return layers


def merge_masked(model: nn.Module) -> nn.Module:
    """``model`` with every wrapped layer replaced by a plain ``nn.Linear`` holding ``W + delta``."""
    return unpatch(model, merge=True)


def initial_entries(init_from: str, model: nn.Module, ctx: MethodContext) -> tuple[dict[str, Entries], dict[str, Any]]:
    """The entries to start training from (``method.init_from``): a peft SHiRA / Super-Tuning adapter
    folder (trained anywhere, or written by ``rmpeft-export --format peft``) or an rmpeft masking delta.

    Their shapes are checked against ``model``; a known base fingerprint (rmpeft's folders) against the
    run's base model, an adapter's ``base_model_name_or_path`` against the model's source.
    """
    from rmpeft.base_model import base_fingerprint
    from rmpeft.methods.delta_format import META_FILE, open_delta
    from rmpeft.models import model_source

    folder = Path(str(init_from)).expanduser()
    if not folder.is_dir():
        raise RmpeftError(f"method.init_from='{init_from}' is not a folder; expected a peft SHiRA or Super-Tuning "
                          "adapter folder or an rmpeft masking delta")
    known_base: str | None = None
    if (folder / META_FILE).is_file():
        delta = open_delta(folder)
        if delta.method not in ("masking", "structured_masking"):
            raise RmpeftError(f"method.init_from: {folder} is a {delta.method} delta, not a masking one")
        entries = delta_entries(delta)
        shape_of = linear_shapes(model)
        for q, e in entries.items():
            if shape_of(q) != e.shape:
                raise RmpeftError(f"method.init_from: delta {folder} does not fit the model: {q} is not a "
                                  f"{e.shape[0]}x{e.shape[1]} linear layer")
        known_base, kind = delta.meta["base"].get("fingerprint"), f"rmpeft {delta.method} delta"
        files = {k: v["sha256"] for k, v in delta.meta["files"].items()}
    else:
        config, entries = read_adapter(folder, linear_shapes(model))
        kind = f"peft {config['peft_type']} adapter"
        exported = folder / "rmpeft.json"
        if exported.is_file():
            try:
                known_base = json.loads(exported.read_text())["delta"]["base"]["fingerprint"]
            except (ValueError, KeyError, TypeError):
                raise RmpeftError(f"method.init_from: corrupt adapter {folder}: rmpeft.json is unreadable") from None
        base = config.get("base_model_name_or_path")
        if known_base is None and base and ctx.model_cfg is not None and ctx.cache_dir is not None:
            here = {str(s) for s in (ctx.model_cfg.get("name_or_path"), model_source(ctx.model_cfg, ctx.cache_dir)) if s}
            if str(base) not in here and not any(Path(s).exists() and Path(base).exists()
                                                 and Path(s).resolve() == Path(base).resolve() for s in here):
                raise RmpeftError(f"method.init_from: adapter {folder} was trained on base model '{base}', not on "
                                  f"'{ctx.model_cfg.get('name')}' ({', '.join(sorted(here))})")
        files = {n: file_sha256(folder / n) for n in (CONFIG_FILE, WEIGHTS_FILE)}
    if known_base and ctx.model_cfg is not None and ctx.cache_dir is not None:
        here = base_fingerprint(ctx.model_cfg, ctx.cache_dir)
        if here["from"] == "weights" and here["fingerprint"] != known_base:
            raise RmpeftError(f"method.init_from: {folder} was trained on another base model (fingerprint "
                              f"{known_base}), not on '{here['name']}' (fingerprint {here['fingerprint']})")
    if not entries:
        raise RmpeftError(f"method.init_from: {folder} holds no trained entry")
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:FINGERPRINT_CHARS]
    facts = {"path": str(folder), "kind": kind, "fingerprint": digest,
             "entries": sum(e.count for e in entries.values())}
    return entries, facts


def initial_layers(model: nn.Module, entries: dict[str, Entries], backend: Any) -> dict[str, nn.Module]:
    """MaskedLinear wrappers at the entries' positions, their values set to the entries' (fp32)."""
    layers: dict[str, nn.Module] = {}
    for q, e in entries.items():
        lin = model.get_submodule(q)
        on_meta = lin.weight.device.type == "meta"
        dtype = index_dtype(e.numel)
        index = torch.empty(e.count, dtype=dtype, device="meta") if on_meta else e.positions.to(dtype)
        layer = MaskedLinear(lin, index, backend)
        if not on_meta:
            layer.values.data = e.values.to(lin.weight.device)
        layers[q] = layer
    return layers
