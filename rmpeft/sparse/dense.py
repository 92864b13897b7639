"""The naive reference: scatter the values into a dense delta and let autograd do the rest.

Autograd computes the dense gradient of the delta (a full out x in matrix, as expensive as full
fine-tuning's weight gradient) and gathers the masked entries from it. Kept to check the numerics of
the sparse backends and as the baseline of ``rmpeft-bench``; ``auto`` never picks it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from rmpeft.sparse.base import SparseBackend


def dense_delta(values: torch.Tensor, index: torch.Tensor, out_features: int, in_features: int,
                dtype: torch.dtype | None = None) -> torch.Tensor:
    """The dense matrix that holds ``values`` at ``index`` and zeros elsewhere (differentiable)."""
    dtype = dtype or values.dtype
    flat = values.new_zeros(out_features * in_features, dtype=dtype)
    return flat.index_add(0, index, values.to(dtype)).view(out_features, in_features)


class DenseBackend(SparseBackend):
    name = "dense"
    sparse = False

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               values: torch.Tensor, index: torch.Tensor, module: Any = None) -> torch.Tensor:
        delta = dense_delta(values, index, weight.shape[0], weight.shape[1], dtype=weight.dtype)
        return F.linear(x, weight + delta, bias)
