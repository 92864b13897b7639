"""Sparse update engine behind Random Masking and Structured Masking.

* :mod:`rmpeft.sparse.layers`: :class:`MaskedLinear` / :class:`ColumnMaskedLinear` and patch helpers;
* :mod:`rmpeft.sparse.base`: the backend interface and registry (``torch``, ``spops``, ``triton``,
  ``dense``); :mod:`rmpeft.sparse.auto` resolves ``auto``;
* :mod:`rmpeft.sparse.sampling`: exact uniform sampling of mask positions and columns;
* :mod:`rmpeft.sparse.autotune`: per-shape strategy choice by measurement.
"""

from rmpeft.sparse.base import (
    BACKEND_NAMES,
    SparseBackend,
    available_backends,
    get_backend,
)
from rmpeft.sparse.layers import (
    ColumnMaskedLinear,
    MaskedLinear,
    layer_state_bytes,
    masked_layers,
    patch,
    unpatch,
)

__all__ = [
    "BACKEND_NAMES", "ColumnMaskedLinear", "MaskedLinear", "SparseBackend", "available_backends", "get_backend",
    "layer_state_bytes", "masked_layers", "patch", "unpatch",
]
