"""Pure-PyTorch sparse backend (CPU and CUDA).

Forward and the input gradient each pick, by measurement (:mod:`rmpeft.sparse.strategy_tuning`), one of

* ``inplace``: add the values into ``W`` at their positions, one dense product, then write the saved
  original entries back (an exact copy of their bits, so ``W`` is bit-identical afterwards). Costs
  ``O(nnz)`` besides the product and allocates nothing of ``W``'s size. Only when the product runs in
  ``W``'s own dtype; the change is made through ``W.data`` so autograd never sees it;
* ``merged``: the same on a fresh copy of ``W`` (one pass over ``W``, freed right after);
* ``split``: the dense product with ``W`` plus a CSR sparse-dense product with ``S`` (cost in
  ``nnz x tokens``; wins when there are few tokens, as in generation).

No merged weight is kept between forward and backward (backward re-merges), so memory stays at the
frozen model's plus the values. The values' gradient is a sampled dense-dense product (SDDMM)
``(G.T @ X)[mask]``, computed by one of

* ``sampled_addmm``: ``torch.sparse.sampled_addmm`` on a CSR pattern (run in fp32 for half-precision
  inputs: CPU kernels take fp32/fp64 only);
* ``gather``: gather the needed columns of ``G`` and ``X`` and reduce over tokens, in chunks (best for
  few entries: no transposed copies);
* ``tiles``: dense products of row blocks, keeping only the masked entries of each block (best when
  most entries are trainable). Memory is bounded by the block, never a dense weight gradient.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from rmpeft.sparse import strategy_tuning
from rmpeft.sparse.base import SparseBackend, compute_dtype
from rmpeft.sparse.indexing import can_patch_in_place, csr_structure, rows_cols, weight_with_delta

FORWARD_STRATEGIES = ("inplace", "merged", "split")
SDDMM_STRATEGIES = ("sampled_addmm", "gather", "tiles")
_CHUNK_ELEMENTS = 1 << 22          # gather / tiles temporaries stay below this many elements


def _sparse_dtype(dtype: torch.dtype) -> torch.dtype:
    """Sparse kernels run in fp32 (or fp64): CPU (MKL) kernels take nothing else, and on CUDA it gives the
    fp32 accumulation half-precision values need."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: at least fp32."""
    return torch.promote_types(dtype, torch.float32)


def _csr(index: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    crow, cols = csr_structure(index, shape)
    with warnings.catch_warnings():  # torch's "CSR support is in beta" notice says nothing to a user
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, cols, values, shape, check_invariants=False)


# --- forward / input gradient -------------------------------------------------------------------

def _forward_patched(in_place: bool):
    def forward(x2, weight, bias, values, index, dtype):
        with weight_with_delta(weight, values, index, dtype, in_place) as w:
            return F.linear(x2, w, None if bias is None else bias.to(dtype))   # bias fused: one addmm
    return forward


def _grad_input_patched(in_place: bool):
    def grad_input(g2, weight, values, index, dtype):
        with weight_with_delta(weight, values, index, dtype, in_place) as w:
            return g2 @ w
    return grad_input


def forward_split(x2, weight, bias, values, index, dtype):
    y = F.linear(x2, weight.to(dtype), None if bias is None else bias.to(dtype))
    sdt = _sparse_dtype(dtype)
    s = _csr(index, values.to(sdt), tuple(weight.shape))
    return y.add_((s @ x2.to(sdt).T).T.to(dtype))


def grad_input_split(g2, weight, values, index, dtype):
    gx = g2 @ weight.to(dtype)
    sdt = _sparse_dtype(dtype)
    s = _csr(index, values.to(sdt), tuple(weight.shape))
    return gx.add_((g2.to(sdt) @ s).to(dtype))


# --- values gradient (SDDMM) ---------------------------------------------------------------------

def sddmm_sampled_addmm(g2, x2, index, shape):
    """``(g2.T @ x2)`` at ``index`` with torch.sparse.sampled_addmm (fp32 accumulation)."""
    sdt = _sparse_dtype(g2.dtype)
    # zeros, not empty: the CPU kernel multiplies the pattern's values by beta=0, so NaN garbage would stay
    pattern = _csr(index, torch.zeros(index.numel(), dtype=sdt, device=g2.device), shape)
    return torch.sparse.sampled_addmm(pattern, g2.T.to(sdt), x2.to(sdt), beta=0.0).values()


def sddmm_gather(g2, x2, index, shape):
    """Gather the columns of ``g2`` and ``x2`` each entry needs and reduce over tokens, in chunks."""
    rows, cols = rows_cols(index, shape[1])
    acc = _acc_dtype(g2.dtype)
    out = torch.empty(index.numel(), dtype=acc, device=g2.device)
    step = max(1, _CHUNK_ELEMENTS // max(1, g2.shape[0]))
    for s in range(0, index.numel(), step):
        a = g2.index_select(1, rows[s:s + step]).to(acc)
        b = x2.index_select(1, cols[s:s + step]).to(acc)
        out[s:s + step] = torch.linalg.vecdot(a, b, dim=0)
    return out


def sddmm_tiles(g2, x2, index, shape):
    """Dense products of row blocks of ``g2.T @ x2``, keeping the masked entries of each block."""
    out_features, in_features = shape
    crow = csr_structure(index, shape)[0].tolist()
    block = max(1, _CHUNK_ELEMENTS // max(1, in_features))
    gt = g2.T
    out = torch.empty(index.numel(), dtype=_acc_dtype(g2.dtype), device=g2.device)
    for r0 in range(0, out_features, block):
        r1 = min(out_features, r0 + block)
        a, b = crow[r0], crow[r1]
        if a == b:
            continue
        tile = (gt[r0:r1] @ x2).to(out.dtype).view(-1)
        out[a:b] = tile[(index[a:b] - r0 * in_features).long()]
    return out


_FORWARD = {"inplace": _forward_patched(True), "merged": _forward_patched(False), "split": forward_split}
_GRAD_INPUT = {"inplace": _grad_input_patched(True), "merged": _grad_input_patched(False), "split": grad_input_split}
_SDDMM = {"sampled_addmm": sddmm_sampled_addmm, "gather": sddmm_gather, "tiles": sddmm_tiles}


def rule_forward(weight: torch.Tensor, dtype: torch.dtype, nnz: int, tokens: int) -> str:
    """Fixed rule used without autotuning: patch in place when possible; otherwise merging (one pass over
    W) unless the split product (~8 per entry and token) is cheaper."""
    if can_patch_in_place(weight, dtype):
        return "inplace"
    return "merged" if weight.numel() <= 8 * nnz * tokens else "split"


def rule_sddmm(weight: torch.Tensor, dtype: torch.dtype, nnz: int, tokens: int) -> str:
    """Fixed rule used without autotuning (thresholds measured on CPU with OPT-125m shapes): dense tiles
    when most entries train, gathering for fewer entries than a row plus a column of W."""
    out_features, in_features = weight.shape
    if nnz > 0.25 * out_features * in_features:
        return "tiles"
    return "gather" if nnz <= out_features + in_features else "sampled_addmm"


class _Choice:
    """The strategies of one call: pinned by the backend's settings, a fixed rule, or measured."""

    def __init__(self, backend: "TorchBackend", weight: torch.Tensor, nnz: int, tokens: int,
                 dtype: torch.dtype) -> None:
        self.backend, self.weight, self.nnz, self.tokens, self.dtype = backend, weight, nnz, tokens, dtype
        self.key = (f"{weight.shape[0]}x{weight.shape[1]}", f"nnz<={strategy_tuning.bucket(nnz)}",
                    f"tokens<={strategy_tuning.bucket(tokens)}", str(dtype).split(".")[-1], weight.device.type)
        # `inplace` does what `merged` does without the copy of W, so only one of them is a candidate
        # (a short timing loop with W in cache would under-price the copy).
        self.patch_candidates = ("inplace" if can_patch_in_place(weight, dtype) else "merged", "split")

    def pick(self, what: str, setting: str, rule, candidates) -> str:
        if setting != "auto":
            return setting
        default = rule(self.weight, self.dtype, self.nnz, self.tokens)
        if not self.backend.autotune:
            return default
        return strategy_tuning.choose(("torch", what, *self.key), candidates(), self.weight.device, default)


class _MaskedLinearFn(torch.autograd.Function):
    """``y = x @ (W + S).T + b`` with gradients for ``x`` and the values of ``S`` only."""

    @staticmethod
    def forward(ctx, x, weight, bias, values, index, backend, dtype):
        out_features, in_features = weight.shape
        x2 = x.reshape(-1, in_features).to(dtype)
        choice = _Choice(backend, weight, index.numel(), x2.shape[0], dtype)
        fwd = choice.pick("forward", backend.forward_strategy, rule_forward,
                          lambda: {n: (lambda f=f: f(x2, weight, bias, values, index, dtype))
                                   for n, f in _FORWARD.items() if n in choice.patch_candidates})
        y = _FORWARD[fwd](x2, weight, bias, values, index, dtype)
        ctx.save_for_backward(x if ctx.needs_input_grad[3] else None, weight, values, index)
        ctx.choice, ctx.dtype, ctx.x_shape, ctx.x_dtype = choice, dtype, x.shape, x.dtype
        return y.view(*x.shape[:-1], out_features)

    @staticmethod
    @once_differentiable  # the strategies patch W in place: a double backward would silently drop terms
    def backward(ctx, gy):
        x, weight, values, index = ctx.saved_tensors
        choice, dtype = ctx.choice, ctx.dtype
        x2 = None if x is None else x.reshape(-1, weight.shape[1]).to(dtype)
        g2 = gy.reshape(-1, weight.shape[0]).to(dtype)
        gx = gv = None
        if ctx.needs_input_grad[0]:
            name = choice.pick("grad_input", choice.backend.forward_strategy, rule_forward,
                               lambda: {n: (lambda f=f: f(g2, weight, values, index, dtype))
                                        for n, f in _GRAD_INPUT.items() if n in choice.patch_candidates})
            gx = _GRAD_INPUT[name](g2, weight, values, index, dtype).view(ctx.x_shape).to(ctx.x_dtype)
        if ctx.needs_input_grad[3]:
            if index.numel() == 0:
                gv = torch.zeros_like(values)
            else:
                shape = tuple(weight.shape)
                name = choice.pick("sddmm", choice.backend.sddmm_strategy, rule_sddmm,
                                   lambda: {n: (lambda f=f: f(g2, x2, index, shape)) for n, f in _SDDMM.items()})
                gv = _SDDMM[name](g2, x2, index, shape).to(values.dtype)
        return gx, None, None, gv, None, None, None


class TorchBackend(SparseBackend):
    """Pure PyTorch; ``forward_strategy`` / ``sddmm_strategy`` pin a strategy (tests, benchmarks)."""

    name = "torch"

    def __init__(self, forward_strategy: str = "auto", sddmm_strategy: str = "auto", autotune: bool = True) -> None:
        if forward_strategy not in ("auto", *FORWARD_STRATEGIES):
            raise ValueError(forward_strategy)
        if sddmm_strategy not in ("auto", *SDDMM_STRATEGIES):
            raise ValueError(sddmm_strategy)
        self.forward_strategy, self.sddmm_strategy, self.autotune = forward_strategy, sddmm_strategy, autotune

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               values: torch.Tensor, index: torch.Tensor, module: Any = None) -> torch.Tensor:
        dtype = compute_dtype(x, weight)
        if index.numel() == 0 and not values.requires_grad:
            return F.linear(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype))
        # The product runs in `dtype` explicitly; autocast must not recast inside the function.
        guard = torch.autocast(x.device.type, enabled=False) if x.device.type in ("cpu", "cuda") else nullcontext()
        with guard:
            return _MaskedLinearFn.apply(x, weight, bias, values, index, self, dtype)
