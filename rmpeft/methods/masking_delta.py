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

from pathlib import Path
from typing import Any

import torch
from torch import nn

from rmpeft.deltas.format import Delta, write_tensors
from rmpeft.errors import RmpeftError
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
