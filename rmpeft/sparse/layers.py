"""Linear layers with a sparse trainable update, and helpers to put them in (and take them out of) a model.

:class:`MaskedLinear` (Random Masking) keeps the frozen ``nn.Linear`` as ``base_layer`` and adds
``values`` (the trainable entries of ``S``, a delta that starts at zero) and ``index`` (their flat
row-major positions, sorted, int32): ``y = x @ (W + S).T + b``. :class:`ColumnMaskedLinear`
(Structured Masking) trains whole columns: ``y = x @ W.T + x[..., columns] @ V.T + b``.
Both store only the trainable entries and their positions: no dense copy of a matrix, and the frozen
weight's ``.grad`` stays None.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rmpeft.sparse.base import SparseBackend


class _WrappedLinear(nn.Module):
    """Common surface of the wrappers: behaves like the ``nn.Linear`` it wraps."""

    base_layer: nn.Linear

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def delta(self) -> torch.Tensor:
        """The dense update this layer adds to ``weight`` (for inspection and merging)."""
        raise NotImplementedError

    def merged_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` with ``W + delta`` (a new module; this one is untouched)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            lin.weight.copy_(self.weight + self.delta().to(self.weight.dtype))
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin


class MaskedLinear(_WrappedLinear):
    """Random Masking: trainable values at sampled positions of a frozen weight."""

    def __init__(self, base_layer: nn.Linear, index: torch.Tensor, backend: SparseBackend) -> None:
        super().__init__()
        self.base_layer = base_layer
        w = base_layer.weight
        self.values = nn.Parameter(torch.zeros(index.numel(), dtype=w.dtype, device=w.device))
        self.register_buffer("index", index.to(w.device))
        self.backend = backend
        if w.device.type != "meta":
            backend.prepare(self)

    @property
    def nnz(self) -> int:
        return self.index.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backend.linear(x, self.base_layer.weight, self.base_layer.bias, self.values, self.index, self)

    def delta(self) -> torch.Tensor:
        flat = self.values.new_zeros(self.out_features * self.in_features)
        return flat.index_add(0, self.index, self.values.detach()).view(self.out_features, self.in_features)

    def extra_repr(self) -> str:
        return f"nnz={self.nnz}, backend={self.backend.name}"


class ColumnMaskedLinear(_WrappedLinear):
    """Structured Masking: whole trainable columns (input features) of a frozen weight."""

    def __init__(self, base_layer: nn.Linear, columns: torch.Tensor) -> None:
        super().__init__()
        self.base_layer = base_layer
        w = base_layer.weight
        self.values = nn.Parameter(torch.zeros(w.shape[0], columns.numel(), dtype=w.dtype, device=w.device))
        self.register_buffer("columns", columns.to(device=w.device, dtype=torch.int32))

    @property
    def nnz(self) -> int:
        return self.values.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        picked = x.index_select(-1, self.columns)
        values = self.values if torch.is_autocast_enabled(x.device.type) else self.values.to(picked.dtype)
        return y + F.linear(picked, values).to(y.dtype)

    def delta(self) -> torch.Tensor:
        d = self.values.new_zeros(self.out_features, self.in_features)
        d[:, self.columns.long()] = self.values.detach()
        return d

    def extra_repr(self) -> str:
        return f"columns={self.columns.numel()}"


def _set_submodule(model: nn.Module, qname: str, module: nn.Module) -> None:
    parent_name, _, leaf = qname.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, module)


def patch(model: nn.Module, replacements: dict[str, nn.Module]) -> None:
    """Put ``replacements`` (qualified name -> wrapper) into ``model`` in place."""
    for qname, module in replacements.items():
        _set_submodule(model, qname, module)


def masked_layers(model: nn.Module) -> dict[str, _WrappedLinear]:
    """Every sparse wrapper in ``model`` by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, _WrappedLinear)}


def unpatch(model: nn.Module, merge: bool = False) -> nn.Module:
    """Put plain linear layers back: the frozen originals, or with ``merge=True`` ``W + delta``."""
    for qname, module in list(masked_layers(model).items()):
        _set_submodule(model, qname, module.merged_linear() if merge else module.base_layer)
    return model


def layer_state_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of the compact state kept by the wrappers: values and their positions."""
    values = positions = 0
    for m in masked_layers(model).values():
        values += m.values.numel() * m.values.element_size()
        for buf in m.buffers(recurse=False):
            positions += buf.numel() * buf.element_size()
    return {"values": values, "positions": positions}
