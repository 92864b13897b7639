"""The spops backend: IST-DASLab's sparse kernels (``csr_add`` and ``sddmm``), as used by the paper.

spops is optional and must be installed from its source repository (the package of that name on
PyPI is unrelated). It is detected at import: a module named ``spops`` without ``csr_add`` and
``sddmm`` is not it. Its CUDA kernels index rows and columns with int16, so a matrix with a dimension
above 32767 falls back to the torch backend (per matrix).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch

from rmpeft.sparse.base import SparseBackend
from rmpeft.sparse.merged import merged_sddmm_linear
from rmpeft.sparse.indexing import crow_indices, rows_cols
from rmpeft.sparse.torch_backend import TorchBackend

INT16_MAX = 32767


def _load_spops() -> tuple[Any, str | None]:
    try:
        import spops  # type: ignore[import-not-found]
    except Exception as e:  # noqa: BLE001 - any import failure means "not available"
        return None, f"spops is not installed ({type(e).__name__}); install it from IST-DASLab's repository"
    if not (callable(getattr(spops, "csr_add", None)) and callable(getattr(spops, "sddmm", None))):
        return None, "the installed 'spops' is not IST-DASLab's sparse library (no csr_add/sddmm)"
    return spops, None


SPOPS, SPOPS_MISSING = _load_spops()


class SpopsBackend(SparseBackend):
    name = "spops"

    def __init__(self) -> None:
        self._fallback = TorchBackend()

    def unavailable_reason(self, device: torch.device) -> str | None:
        return SPOPS_MISSING

    def supports(self, out_features: int, in_features: int, device: torch.device) -> bool:
        if SPOPS is None:
            return False
        return max(out_features, in_features) <= INT16_MAX

    def prepare(self, module: Any) -> None:
        """CSR structure in spops' layout: int32 row offsets, int16 rows sorted by length, int16 columns."""
        if not self.supports(module.out_features, module.in_features, module.index.device):
            return
        rows, cols = rows_cols(module.index, module.in_features)
        offsets = crow_indices(rows, module.out_features).to(torch.int32)
        order = torch.argsort(torch.diff(offsets), descending=True)
        module.register_buffer("spops_row_offsets", offsets, persistent=False)
        module.register_buffer("spops_row_indices", order.to(torch.int16), persistent=False)
        module.register_buffer("spops_col_indices", cols.to(torch.int16), persistent=False)

    # MergeSddmm -----------------------------------------------------------------------------------
    @contextmanager
    def merged(self, weight, values, index, dtype, module):
        yield SPOPS.csr_add(values.to(dtype), module.spops_row_offsets, module.spops_row_indices,
                            module.spops_col_indices, weight.to(dtype)).to(dtype)

    def sddmm(self, g2, x2, index, shape, module):
        return SPOPS.sddmm(module.spops_row_offsets, module.spops_row_indices, module.spops_col_indices,
                           g2.T.contiguous(), x2.T.contiguous())

    def linear(self, x, weight, bias, values, index, module=None):
        if module is None or not hasattr(module, "spops_row_offsets") or index.numel() == 0:
            return self._fallback.linear(x, weight, bias, values, index, module)
        return merged_sddmm_linear(self, x, weight, bias, values, index, module)
