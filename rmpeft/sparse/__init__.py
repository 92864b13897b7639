"""Sparse update engine behind Random Masking and Structured Masking.

Modules, in import order (each imports only those above it):

* :mod:`~rmpeft.sparse.base`: the backend interface; :mod:`~rmpeft.sparse.indexing`: flat positions,
  CSR offsets and ``W + S``; :mod:`~rmpeft.sparse.strategy_tuning`: per-shape choice among a backend's
  equivalent strategies, by measurement, stored per machine; :mod:`~rmpeft.sparse.mask_sampling`: exact
  uniform mask sampling;
* the backends: :mod:`~rmpeft.sparse.dense` (reference), :mod:`~rmpeft.sparse.torch_backend`,
  :mod:`~rmpeft.sparse.merged` (shared by) :mod:`~rmpeft.sparse.spops_backend` and
  :mod:`~rmpeft.sparse.triton_backend`; :mod:`~rmpeft.sparse.registry`: them by name;
* :mod:`~rmpeft.sparse.layers`: :class:`MaskedLinear` / :class:`ColumnMaskedLinear` and patch helpers;
* :mod:`~rmpeft.sparse.selection`: ``method.backend`` (``auto`` included) resolved for a device, and
  :func:`use_backend` to switch a model's masked layers for a block.

Code outside this package uses the names below only.
"""

from rmpeft.sparse.base import SparseBackend
from rmpeft.sparse.layers import (
    ColumnMaskedLinear,
    MaskedLinear,
    layer_state_bytes,
    masked_layers,
    patch,
    unpatch,
)
from rmpeft.sparse.registry import BACKEND_NAMES, available_backends, get_backend
from rmpeft.sparse.mask_sampling import (
    column_order,
    index_dtype,
    sample_positions,
    split_count,
    take_columns,
)
from rmpeft.sparse.selection import select_backend, use_backend
from rmpeft.sparse.strategy_tuning import (
    reset_strategy_decisions,
    set_strategy_cache_dir,
    strategy_cache_file,
    strategy_decisions,
)

__all__ = [
    "BACKEND_NAMES", "ColumnMaskedLinear", "MaskedLinear", "SparseBackend", "available_backends",
    "column_order", "get_backend", "index_dtype", "layer_state_bytes", "masked_layers", "patch",
    "reset_strategy_decisions", "sample_positions", "select_backend", "set_strategy_cache_dir", "split_count",
    "strategy_cache_file", "strategy_decisions",
    "take_columns", "unpatch", "use_backend",
]
