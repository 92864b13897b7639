"""Flat row-major positions of a sparse update: rows and columns, CSR offsets, and ``W + S``.

Shared by the backends. A position is ``row * in_features + col``; positions are sorted, which is also
the order of CSR storage.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def rows_cols(index: torch.Tensor, in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column of each flat row-major position (same integer dtype as ``index``)."""
    rows = torch.div(index, in_features, rounding_mode="floor")
    return rows, index - rows * in_features


def crow_indices(rows: torch.Tensor, out_features: int) -> torch.Tensor:
    """CSR row offsets of sorted row indices, in the rows' dtype."""
    crow = torch.zeros(out_features + 1, dtype=torch.int64, device=rows.device)
    crow[1:] = torch.bincount(rows.long(), minlength=out_features).cumsum(0)
    return crow.to(rows.dtype)


def csr_structure(index: torch.Tensor, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR row offsets and column indices of sorted positions, in the index dtype.

    The row offsets (``out_features + 1`` integers, nothing per entry) are kept on the index tensor itself
    and reused while it is unchanged (same shape and version), so a training step does not rebuild them
    in every layer's forward and backward; the columns are one remainder.
    """
    out_features, in_features = shape
    key = (out_features, in_features, index._version)
    cached = getattr(index, "_rmpeft_crow", None)
    if cached is None or cached[0] != key:
        rows = torch.div(index, in_features, rounding_mode="floor")
        cached = (key, crow_indices(rows, out_features))
        index._rmpeft_crow = cached
    return cached[1], torch.remainder(index, in_features)


def merged_weight(weight: torch.Tensor, values: torch.Tensor, index: torch.Tensor,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """A fresh ``W + S`` in ``dtype`` (``weight`` itself is never modified)."""
    dtype = dtype or weight.dtype
    merged = weight.to(dtype, copy=True)
    merged.view(-1).index_add_(0, index, values.to(dtype))
    return merged


def can_patch_in_place(weight: torch.Tensor, dtype: torch.dtype) -> bool:
    return weight.dtype == dtype and weight.is_contiguous()


@contextmanager
def weight_with_delta(weight: torch.Tensor, values: torch.Tensor, index: torch.Tensor,
                      dtype: torch.dtype, in_place: bool) -> Iterator[torch.Tensor]:
    """``W + S`` for the duration of the block: ``W`` itself, patched and restored bit for bit
    (``in_place``, when :func:`can_patch_in_place`), or a fresh merged copy."""
    if not (in_place and can_patch_in_place(weight, dtype)):
        yield merged_weight(weight, values, index, dtype)
        return
    flat = weight.data.view(-1)            # .data: its own version counter, invisible to autograd
    original = flat[index]                 # a copy of the nnz entries about to change
    try:
        flat.index_add_(0, index, values.to(dtype))
        yield weight
    finally:
        flat[index] = original             # the exact original bits, whatever the arithmetic did
