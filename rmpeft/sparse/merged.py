"""A masked linear layer built from two kernels: ``merged`` (``W + S``) and ``sddmm`` (values gradient).

Shared by the kernel-library backends (spops, triton): the forward multiplies by the merged weight,
the backward merges again for the input gradient (no merged weight is kept between forward and
backward, so memory stays at the frozen model's plus the values) and computes the values' gradient
with the backend's SDDMM, never the dense weight gradient.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from rmpeft.sparse.base import compute_dtype


class MergeSddmm(Protocol):
    def merged(self, weight: torch.Tensor, values: torch.Tensor, index: torch.Tensor, dtype: torch.dtype,
               module: Any) -> AbstractContextManager[torch.Tensor]: ...

    def sddmm(self, g2: torch.Tensor, x2: torch.Tensor, index: torch.Tensor, shape: tuple[int, int],
              module: Any) -> torch.Tensor: ...


class _MergedSddmmFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, values, index, impl, module, dtype):
        out_features, in_features = weight.shape
        x2 = x.reshape(-1, in_features).to(dtype)
        with impl.merged(weight, values, index, dtype, module) as w:
            y = F.linear(x2, w, None if bias is None else bias.to(dtype))
        ctx.save_for_backward(x2 if ctx.needs_input_grad[3] else None, weight, values, index)
        ctx.impl, ctx.module, ctx.dtype, ctx.x_shape, ctx.x_dtype = impl, module, dtype, x.shape, x.dtype
        return y.view(*x.shape[:-1], out_features)

    @staticmethod
    def backward(ctx, gy):
        x2, weight, values, index = ctx.saved_tensors
        g2 = gy.reshape(-1, weight.shape[0]).to(ctx.dtype)
        gx = gv = None
        if ctx.needs_input_grad[0]:
            with ctx.impl.merged(weight, values, index, ctx.dtype, ctx.module) as w:
                gx = (g2 @ w).view(ctx.x_shape).to(ctx.x_dtype)
        if ctx.needs_input_grad[3]:
            if index.numel() == 0:
                gv = torch.zeros_like(values)
            else:
                gv = ctx.impl.sddmm(g2, x2, index, tuple(weight.shape), ctx.module).to(values.dtype)
        return gx, None, None, gv, None, None, None, None


def merged_sddmm_linear(impl: MergeSddmm, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        values: torch.Tensor, index: torch.Tensor, module: Any) -> torch.Tensor:
    dtype = compute_dtype(x, weight)
    guard = torch.autocast(x.device.type, enabled=False) if x.device.type in ("cpu", "cuda") else nullcontext()
    with guard:
        return _MergedSddmmFn.apply(x, weight, bias, values, index, impl, module, dtype)
