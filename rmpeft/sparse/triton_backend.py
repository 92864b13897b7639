"""The triton backend: a Triton SDDMM kernel for the values' gradient (CUDA only).

Forward and input gradient use ``W + S`` patched into ``W`` and restored bit for bit (or a merged
copy when the product runs in another dtype; see the torch backend). The values' gradient is one
kernel that, for a block of trainable entries, streams the matching rows of ``G.T`` and ``X.T`` over
the token dimension and reduces them in fp32. Available when ``triton``
imports and the device is CUDA (or ``TRITON_INTERPRET=1``, which runs the kernel on CPU for tests).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from rmpeft.sparse.base import SparseBackend
from rmpeft.sparse.merged import merged_sddmm_linear
from rmpeft.sparse.indexing import rows_cols, weight_with_delta

try:
    import triton  # type: ignore[import-not-found]
    import triton.language as tl  # type: ignore[import-not-found]

    TRITON_MISSING: str | None = None
except Exception as _e:  # noqa: BLE001 - any import failure means "not available"
    triton = tl = None
    TRITON_MISSING = f"triton is not installed ({type(_e).__name__})"


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


if triton is not None:

    @triton.jit
    def _sddmm_kernel(gt_ptr, xt_ptr, rows_ptr, cols_ptr, out_ptr, nnz, tokens, stride_g, stride_x,
                      BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr):
        pid = tl.program_id(0)
        e = pid * BLOCK_E + tl.arange(0, BLOCK_E)
        e_ok = e < nnz
        r = tl.load(rows_ptr + e, mask=e_ok, other=0).to(tl.int64)
        c = tl.load(cols_ptr + e, mask=e_ok, other=0).to(tl.int64)
        acc = tl.zeros((BLOCK_E,), dtype=tl.float32)
        for k0 in range(0, tokens, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            ok = e_ok[:, None] & (k < tokens)[None, :]
            a = tl.load(gt_ptr + r[:, None] * stride_g + k[None, :], mask=ok, other=0.0).to(tl.float32)
            b = tl.load(xt_ptr + c[:, None] * stride_x + k[None, :], mask=ok, other=0.0).to(tl.float32)
            acc += tl.sum(a * b, axis=1)
        tl.store(out_ptr + e, acc, mask=e_ok)


def triton_sddmm(g2: torch.Tensor, x2: torch.Tensor, index: torch.Tensor, shape: tuple[int, int],
                 block_e: int = 64, block_k: int = 64) -> torch.Tensor:
    """``(g2.T @ x2)`` at the flat positions ``index``, accumulated in fp32."""
    rows, cols = rows_cols(index, shape[1])
    gt, xt = g2.T.contiguous(), x2.T.contiguous()
    out = torch.empty(index.numel(), dtype=torch.float32, device=g2.device)
    grid = (triton.cdiv(index.numel(), block_e),)
    _sddmm_kernel[grid](gt, xt, rows.contiguous(), cols.contiguous(), out, index.numel(), gt.shape[1],
                        gt.stride(0), xt.stride(0), BLOCK_E=block_e, BLOCK_K=block_k)
    return out


class TritonBackend(SparseBackend):
    name = "triton"

    def unavailable_reason(self, device: torch.device) -> str | None:
        if TRITON_MISSING is not None:
            return TRITON_MISSING
        if device.type != "cuda" and not _interpreting():
            return "the triton kernel needs a CUDA device"
        return None

    def merged(self, weight, values, index, dtype, module):
        return weight_with_delta(weight, values, index, dtype, in_place=True)

    def sddmm(self, g2, x2, index, shape, module):
        return triton_sddmm(g2, x2, index, shape)

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               values: torch.Tensor, index: torch.Tensor, module: Any = None) -> torch.Tensor:
        return merged_sddmm_linear(self, x, weight, bias, values, index, module)
