"""The sparse-update backend interface (the registry of concrete backends is :mod:`rmpeft.sparse.registry`).

A backend computes ``y = x @ (W + S).T + b`` where ``W`` is a frozen dense weight and ``S`` a sparse
matrix given by compact ``values`` at flat row-major positions ``index`` (``row * in + col``), with
gradients for ``x`` and ``values`` only: the dense weight never receives a gradient. Backends differ in
how they compute it (and so in speed and memory), never in the result beyond floating-point rounding.
"""

from __future__ import annotations

from typing import Any

import torch


class SparseBackend:
    """One way of computing the masked linear layer. Subclasses implement :meth:`linear`."""

    name: str = ""
    sparse: bool = True          # False only for the dense reference (it materialises a dense delta)

    def unavailable_reason(self, device: torch.device) -> str | None:
        """Why the backend cannot run on ``device`` (None when it can)."""
        return None

    def supports(self, out_features: int, in_features: int, device: torch.device) -> bool:
        """Whether a matrix of this shape can use the backend (e.g. spops' 16-bit index limit)."""
        return self.unavailable_reason(device) is None

    def prepare(self, module: Any) -> None:
        """Build per-module caches the backend needs (called once the mask is known)."""

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               values: torch.Tensor, index: torch.Tensor, module: Any = None) -> torch.Tensor:
        raise NotImplementedError


def compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype the product runs in: the autocast dtype when autocast is on, else the weight's."""
    kind = x.device.type
    if kind in ("cuda", "cpu") and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return weight.dtype
