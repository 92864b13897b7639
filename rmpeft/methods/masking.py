"""Random Masking and Structured Masking (Xu & Zhang, ICML 2024).

``method.ratio`` is the trainable share of ALL model parameters (the paper's ``params`` column):
``k = floor(ratio * total_params + 1/2)`` entries of the target matrices are trainable.

* ``masking``: the ``k`` entries are drawn uniformly without replacement from the union of the target
  matrices' entries (an exact hypergeometric split over the matrices, then uniform positions inside
  each), from the mask seed. They are stored as compact values plus positions (:class:`MaskedLinear`).
* ``structured_masking``: columns of the same matrices. ``method.layout=pooled``: whole columns pooled
  over all target matrices (see :func:`select_columns` for the rounding to columns);
  ``per_matrix`` (the released code's layout): the same share of every matrix, its columns filled one
  after another, the last one partial (see :func:`per_matrix_positions`).

The mask seed is ``method.mask_seed`` or, when null, the run seed + ``MASK_SEED_OFFSET``. Trainable
values are deltas added to the frozen weights and start at zero, so their norm is the distance of the
trainable parameters from initialisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rmpeft.methods.delta_format import Delta
from rmpeft.errors import RmpeftError, unknown_choice
from rmpeft.methods.base import (
    Method,
    MethodContext,
    MethodHandle,
    find_modules,
    freeze_all,
    module_names,
)
from rmpeft.methods.masking_delta import apply_masked, export_masked, initial_entries, initial_layers, merge_masked
from rmpeft.methods.registry import register_method
from rmpeft.validation import BOOL, Choice, Float, Int, MODULES, Spec
from rmpeft.models import count_parameters
from rmpeft.sparse import (
    BACKEND_NAMES,
    ColumnMaskedLinear,
    MaskedLinear,
    column_order,
    index_dtype,
    patch,
    sample_positions,
    select_backend,
    split_count,
    strategy_decisions,
    take_columns,
)

MASK_SEED_OFFSET = 1000          # mask seed = run seed + this, unless method.mask_seed is set
COLUMN_ORDERS = ("random", "head")
LAYOUTS = ("pooled", "per_matrix")


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if value is None and default is not None else value


def target_names(cfg: Any) -> list[str]:
    """``method.target_modules`` as a list of module-name suffixes (default q_proj, v_proj)."""
    return module_names(_get(cfg, "target_modules", ["q_proj", "v_proj"]))


def resolve_targets(model: nn.Module, cfg: Any) -> dict[str, nn.Linear]:
    """The target linear layers named by ``method.target_modules``, by qualified name."""
    return find_modules(model, target_names(cfg))


def trainable_entries(ratio: Any, total_params: int, capacity: int, target_names: list[str]) -> int:
    """``k = floor(ratio * total + 1/2)``, after checking ``0 < ratio <= capacity / total`` and ``k >= 1``."""
    bound = capacity / total_params
    where = (f"the target modules ({', '.join(target_names)}) hold {capacity} of the model's "
             f"{total_params} parameters")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio):
        raise RmpeftError(f"method.ratio={ratio!r} is not a number in (0, {bound:.6g}]: {where}")
    if not 0 < ratio <= bound * (1 + 1e-12):
        raise RmpeftError(f"method.ratio={ratio} is outside (0, {bound:.6g}]: {where}")
    k = min(capacity, math.floor(ratio * total_params + 0.5))
    if k < 1:
        raise RmpeftError(f"method.ratio={ratio} gives no trainable entry of {total_params} parameters; "
                          f"the smallest ratio is {0.5 / total_params:.3g}")
    return k


def mask_seed(cfg: Any, ctx: MethodContext) -> int:
    seed = _get(cfg, "mask_seed")
    return int(seed) if seed is not None else int(ctx.seed) + MASK_SEED_OFFSET


@dataclass
class MaskingHandle(MethodHandle):
    """Trainable parameters are the compact ``values`` of the wrapped layers, nothing else."""

    layers: dict[str, nn.Module] = field(default_factory=dict)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [m.values for m in self.layers.values()]

    def num_trainable(self) -> int:
        return sum(m.values.numel() for m in self.layers.values())

    def state_for_record(self) -> dict[str, Any]:
        state = dict(self.extra)
        if state.get("backend") == "torch":
            state["strategies"] = {k: v for k, v in strategy_decisions().items() if k.startswith("torch/")}
        return state


def _common(model: nn.Module, cfg: Any, ctx: MethodContext):
    freeze_all(model)
    targets = resolve_targets(model, cfg)
    total = int(ctx.total_params) or count_parameters(model)
    sizes = [m.weight.numel() for m in targets.values()]
    capacity = sum(sizes)
    names = target_names(cfg)
    k = trainable_entries(_get(cfg, "ratio"), total, capacity, names)
    facts = {"ratio": float(_get(cfg, "ratio")), "total_params": total, "k": k, "target_modules": names,
             "target_params": capacity, "max_ratio": capacity / total, "mask_seed": mask_seed(cfg, ctx)}
    return targets, sizes, k, facts


class MaskedDeltas(Method):
    """Delta export, loading and merging shared by both masking methods: the trained entries (values
    and their positions in the weight) of every masked layer."""

    def export_delta(self, handle: MaskingHandle, folder: Path) -> dict[str, Any]:
        return export_masked(handle.layers, folder, self.name, handle.extra.get("backend"))

    def apply_delta(self, model: nn.Module, delta: Delta, ctx: MethodContext) -> MaskingHandle:
        layers = apply_masked(model, delta, ctx)
        return MaskingHandle(model=model, name=self.name, extra=dict(delta.meta.get("method_state") or {}),
                             layers=layers)

    def merged_model(self, handle: MethodHandle) -> nn.Module:
        return merge_masked(handle.model)


@register_method("masking", label="Masking")
class RandomMasking(MaskedDeltas):
    """Uniformly random trainable entries of the target matrices."""

    config_fields = {"ratio": Float(0, 1, low_open=True), "target_modules": MODULES,
                     "backend": Choice(*BACKEND_NAMES), "autotune": BOOL, "mask_seed": Int(0, nullable=True),
                     "init_from": Spec("str", nullable=True, required=False)}

    def apply(self, model: nn.Module, cfg: Any, ctx: MethodContext) -> MaskingHandle:
        if _get(cfg, "init_from"):
            return self._apply_from(model, cfg, ctx, str(_get(cfg, "init_from")))
        targets, sizes, k, facts = _common(model, cfg, ctx)
        counts = split_count(k, sizes, facts["mask_seed"])
        first = next(iter(targets.values())).weight
        shapes = [tuple(m.weight.shape) for m in targets.values()]
        # The backend is chosen for the device the model will train on: weights loaded on the CPU are
        # often moved to the GPU only after the method is applied.
        device = first.device if first.device.type != "cpu" else torch.device(ctx.device)
        backend, backend_facts = select_backend(str(_get(cfg, "backend", "auto")), device, shapes,
                                                [c for c in counts if c], first.dtype,
                                                autotune=bool(_get(cfg, "autotune", True)))
        on_meta = first.device.type == "meta"
        gen = torch.Generator().manual_seed(facts["mask_seed"])
        layers: dict[str, nn.Module] = {}
        for (qname, lin), size, count in zip(targets.items(), sizes, counts):
            if count == 0:          # nothing trainable here: leave the layer as it is
                continue
            if on_meta:             # counting only: no positions are drawn, nothing is allocated
                index = torch.empty(count, dtype=index_dtype(size), device="meta")
            else:
                index = sample_positions(size, count, gen)
            layers[qname] = MaskedLinear(lin, index, backend)
        patch(model, layers)
        facts.update(backend_facts, trainable=sum(counts), density=k / sum(sizes),
                     per_module=dict(zip(targets, counts)))
        return MaskingHandle(model=model, name=self.name, extra=facts, layers=layers)

    def _apply_from(self, model: nn.Module, cfg: Any, ctx: MethodContext, init_from: str) -> MaskingHandle:
        """The mask and the starting values of a saved adapter or delta (``method.init_from``); the
        ratio, target modules and mask seed of the config are not used."""
        freeze_all(model)
        entries, source = initial_entries(init_from, model, ctx)
        first = model.get_submodule(next(iter(entries))).weight
        device = first.device if first.device.type != "cpu" else torch.device(ctx.device)
        backend, backend_facts = select_backend(str(_get(cfg, "backend", "auto")), device,
                                                [e.shape for e in entries.values()],
                                                [e.count for e in entries.values()], first.dtype,
                                                autotune=bool(_get(cfg, "autotune", True)))
        layers = initial_layers(model, entries, backend)
        patch(model, layers)
        total = int(ctx.total_params) or count_parameters(model)
        k = sum(e.count for e in entries.values())
        capacity = sum(e.numel for e in entries.values())
        facts = {"ratio": float(_get(cfg, "ratio")), "total_params": total, "k": k,
                 "target_modules": sorted({q.rsplit(".", 1)[-1] for q in entries}), "target_params": capacity,
                 "mask_seed": None, "init_from": source, **backend_facts, "trainable": k,
                 "density": k / capacity, "per_module": {q: e.count for q, e in entries.items()}}
        return MaskingHandle(model=model, name=self.name, extra=facts, layers=layers)


def select_columns(widths: list[int], heights: list[int], k: int, order: str, seed: int) -> list[list[int]]:
    """Columns per matrix for Structured Masking.

    Columns (``matrix``, ``j``) are ordered (``random``: uniform permutation of all columns of all
    target matrices, from the mask seed; ``head``: column 0 of every matrix in model order, then
    column 1, ...), then taken in that order while adding the next one brings the number of entries
    closer to ``k`` (ties add, at least one column). With equal column heights ``h`` that is
    ``max(1, floor(k / h + 1/2))`` columns.
    """
    if order not in COLUMN_ORDERS:
        raise unknown_choice("method.column_order", order, COLUMN_ORDERS)
    ordered = column_order(widths, order, torch.Generator().manual_seed(seed))
    per_matrix: list[list[int]] = [[] for _ in widths]
    for m, j in take_columns(ordered, heights, k):
        per_matrix[m].append(j)
    return [sorted(c) for c in per_matrix]


def per_matrix_count(ratio: float, total_params: int, size: int, capacity: int) -> int:
    """Trainable entries of one matrix in the ``per_matrix`` layout: ``floor(ratio * total * size /
    capacity)``, the released code's ``int(size * (1 - true_masking_prob))`` (a tiny tolerance absorbs
    float error in the product)."""
    return min(size, math.floor(ratio * total_params * size / capacity + 1e-9))


def per_matrix_positions(height: int, width: int, count: int, order: str, generator: torch.Generator) -> torch.Tensor:
    """Flat (row-major) positions of ``count`` entries of a ``height x width`` weight: its columns in
    ``order`` (``head``: 0, 1, ...; ``random``: a permutation from ``generator``), each filled top to
    bottom, the last one partial (its leading rows). Sorted, compact dtype."""
    if order not in COLUMN_ORDERS:
        raise unknown_choice("method.column_order", order, COLUMN_ORDERS)
    full, rest = divmod(count, height)
    cols = torch.arange(width) if order == "head" else torch.randperm(width, generator=generator)
    rows = torch.arange(height)
    parts = [(rows[:, None] * width + cols[None, :full]).reshape(-1)]
    if rest:
        parts.append(rows[:rest] * width + cols[full])
    return torch.cat(parts).sort().values.to(index_dtype(height * width))


def _per_matrix_layers(targets: dict[str, nn.Linear], cfg: Any, facts: dict[str, Any], order: str,
                       ctx: MethodContext) -> tuple[dict[str, nn.Module], dict[str, Any]]:
    """MaskedLinear wrappers holding the ``per_matrix`` entries of every target matrix."""
    sizes = [m.weight.numel() for m in targets.values()]
    counts = [per_matrix_count(facts["ratio"], facts["total_params"], n, facts["target_params"]) for n in sizes]
    if not any(counts):
        raise RmpeftError(f"method.ratio={facts['ratio']} gives no trainable entry per matrix in "
                          "method.layout=per_matrix; raise the ratio or use method.layout=pooled")
    first = next(iter(targets.values())).weight
    device = first.device if first.device.type != "cpu" else torch.device(ctx.device)
    backend, backend_facts = select_backend("auto", device, [tuple(m.weight.shape) for m in targets.values()],
                                            [c for c in counts if c], first.dtype)
    gen = torch.Generator().manual_seed(facts["mask_seed"])
    layers: dict[str, nn.Module] = {}
    for (qname, lin), size, count in zip(targets.items(), sizes, counts):
        if count == 0:
            continue
        if first.device.type == "meta":
            index = torch.empty(count, dtype=index_dtype(size), device="meta")
        else:
            index = per_matrix_positions(lin.out_features, lin.in_features, count, order, gen)
        layers[qname] = MaskedLinear(lin, index, backend)
    cols = {q: math.ceil(c / lin.out_features) for (q, lin), c in zip(targets.items(), counts)}
    return layers, {**backend_facts, "trainable": sum(counts), "columns": sum(cols.values()),
                    "per_module": dict(zip(targets, counts))}


@register_method("structured_masking", label="Masking(S)")
class StructuredMasking(MaskedDeltas):
    """Trainable columns of the target matrices (``layout``: pooled whole columns or per matrix)."""

    config_fields = {"ratio": Float(0, 1, low_open=True), "target_modules": MODULES,
                     "layout": Spec("choice", choices=LAYOUTS, required=False),
                     "column_order": Choice(*COLUMN_ORDERS), "mask_seed": Int(0, nullable=True)}

    def apply(self, model: nn.Module, cfg: Any, ctx: MethodContext) -> MaskingHandle:
        targets, sizes, k, facts = _common(model, cfg, ctx)
        order = str(_get(cfg, "column_order", "random"))
        layout = str(_get(cfg, "layout", "pooled"))
        if layout not in LAYOUTS:
            raise unknown_choice("method.layout", layout, LAYOUTS)
        if layout == "per_matrix":
            layers, more = _per_matrix_layers(targets, cfg, facts, order, ctx)
            patch(model, layers)
            facts.update(more, layout=layout, column_order=order)
            return MaskingHandle(model=model, name=self.name, extra=facts, layers=layers)
        widths = [m.in_features for m in targets.values()]
        heights = [m.out_features for m in targets.values()]
        columns = select_columns(widths, heights, k, order, facts["mask_seed"])
        layers: dict[str, nn.Module] = {}
        for (qname, lin), cols in zip(targets.items(), columns):
            if cols:
                layers[qname] = ColumnMaskedLinear(lin, torch.tensor(cols, dtype=torch.int32))
        patch(model, layers)
        trainable = sum(h * len(c) for h, c in zip(heights, columns))
        facts.update(backend="columns", layout=layout, column_order=order, trainable=trainable, columns=sum(map(len, columns)),
                     per_module={q: len(c) for q, c in zip(targets, columns)})
        return MaskingHandle(model=model, name=self.name, extra=facts, layers=layers)

