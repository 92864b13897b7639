"""Sharpness: the Hessian eigenvalue of largest magnitude, by power iteration on Hessian-vector products.

The Hessian is taken with respect to the given parameter tensors only (a method's trainable tensors:
for Random Masking the compact vector of trainable values, not the dense weight matrix), of a scalar
loss computed by a closure ``loss_fn()`` (the mean training loss over a fixed set of batches, with
the model in eval mode so that dropout does not change the function between calls).

Two ways to form a Hessian-vector product ``Hv``:

``autograd``
    Pearlmutter's trick: ``g = grad(L, θ, create_graph=True)``, then ``Hv = grad(g·v, θ)``. Exact,
    one forward and two backward passes for the first product, one backward per further product
    (the first-order graph is kept). Needs every operation, including custom autograd functions,
    to be twice differentiable; the graph is built with PyTorch's math attention kernel, since the
    fused (flash / memory-efficient) kernels have no double backward.
``finite_difference``
    Central differences of gradients, ``Hv ≈ (g(θ+εv) − g(θ−εv)) / 2ε``, two forward+backward passes
    per product, no double backward. ε = c·(1+‖θ‖)/‖v‖ with c = cbrt(machine epsilon of θ's dtype)
    (≈4.9e-3 in fp32, 6.1e-6 in fp64), the step that balances the O(ε²) truncation error of central
    differences against the O(u/ε) rounding error of a smooth loss; exact (up to rounding) for
    quadratic losses. Caveat: with piecewise-linear activations (ReLU, as in OPT) the gradient jumps
    wherever a pre-activation crosses zero, and a step of that size crosses many such kinks, so the
    product measures a smoothed curvature that can be far from the autograd Hessian (which is exact
    almost everywhere). It is a fallback, not an alternative of equal standing.
``auto`` (default)
    ``autograd``, checked, and ``finite_difference`` only when autograd cannot be trusted: when
    double backward raises, when a parameter's gradient carries no graph or starts at an error node
    (a custom backward computed outside autograd, or marked ``once_differentiable``), when a
    parameter that moves the loss has no second-order path, or when the operator is not symmetric.
    The last case catches the silent failure: a custom ``autograd.Function`` that saves tensors
    computed inside its forward treats them as constants in double backward, dropping second-order
    terms in one direction only. The check is free: with h₁ = H v₀ and v₁ = h₁/‖h₁‖ (the first two
    power steps), symmetry requires v₀ᵀ(H v₁) = ‖h₁‖; ``hvp_check`` reports
    |v₀ᵀ H v₁ − ‖h₁‖| / ‖h₁‖ and the fallback happens above ``check_rtol``. The mode used and the
    reason for a fallback are reported.

Power iteration converges to the eigenvalue of largest magnitude; its absolute value is the Hessian's
spectral norm, which is what the paper reports ("norm of the Hessian ... using the power method").
Both the signed Rayleigh quotient (``eigenvalue``) and ‖Hv‖ (``norm``) are reported; see
:func:`power_iteration` for when they differ.
torch has no matrix-free eigensolver over a list of parameter tensors, hence the few lines below.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Sequence

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from rmpeft.errors import unknown_choice

HVP_MODES = ("auto", "autograd", "finite_difference")

Vector = list[torch.Tensor]
HvpFn = Callable[[Vector], Vector]


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b)))


def _norm(a: Sequence[torch.Tensor]) -> float:
    return math.sqrt(max(_dot(a, a), 0.0))


def _zeros_for_none(grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor]) -> Vector:
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


class DoubleBackwardUnavailable(RuntimeError):
    """Second derivatives cannot be taken through the loss with autograd."""


def autograd_hvp(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor]) -> HvpFn:
    """Exact HVP operator by double backward; builds the loss graph once (one ``loss_fn()`` call).

    Raises :class:`DoubleBackwardUnavailable` when a parameter that receives a gradient gets one
    without a graph (its backward was not computed with differentiable operations), or, at the first
    product, when such a parameter has no second-order path at all (true of a network loss only when
    a backward cut the graph; a loss that is exactly linear in a parameter needs finite differences).
    """
    params = list(params)
    # Fused attention kernels (flash / memory-efficient, CPU and CUDA) have no double backward; the
    # math kernel is built from differentiable operations. Kernels are chosen when the graph is built.
    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
        loss = loss_fn()
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    # A gradient without a graph, or whose graph starts at an error node (a backward marked
    # once_differentiable), cannot be differentiated again.
    detached = [i for i, g in enumerate(grads) if g is not None
                and (not g.requires_grad or (g.grad_fn is not None and g.grad_fn.name().endswith("Error")))]
    if detached:
        raise DoubleBackwardUnavailable(
            f"the gradient of {len(detached)} of {len(params)} parameter tensor(s) cannot be differentiated again"
        )
    linked = [i for i, g in enumerate(grads) if g is not None]

    def hvp(v: Vector) -> Vector:
        if not linked:
            return [torch.zeros_like(p) for p in params]
        out = torch.autograd.grad(
            [grads[i] for i in linked], params, grad_outputs=[v[i] for i in linked],
            retain_graph=True, allow_unused=True,
        )
        # A parameter that moves the loss but has no second-order path: the double-backward graph
        # was cut somewhere (a non-differentiable custom backward); zeros would be silently wrong.
        cut = [i for i in linked if out[i] is None]
        if cut:
            raise DoubleBackwardUnavailable(
                f"no second-order path to {len(cut)} of {len(params)} parameter tensor(s)"
            )
        return [h.detach() for h in _zeros_for_none(out, params)]

    return hvp


def default_fd_scale(dtype: torch.dtype) -> float:
    """cbrt(machine epsilon): the relative step of central differences."""
    return float(torch.finfo(dtype).eps) ** (1.0 / 3.0)


def finite_difference_hvp(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor],
                          scale: float | None = None) -> HvpFn:
    """HVP operator by central differences of gradients (no double backward).

    The parameters are shifted in place for each gradient and restored bit-for-bit afterwards.
    """
    params = list(params)
    scale = default_fd_scale(params[0].dtype) if scale is None else float(scale)
    theta_norm = _norm([p.detach() for p in params])

    def gradient() -> Vector:
        with torch.enable_grad():
            loss = loss_fn()
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        return [g.detach() for g in _zeros_for_none(grads, params)]

    def hvp(v: Vector) -> Vector:
        v_norm = _norm(v)
        if v_norm == 0.0:
            return [torch.zeros_like(p) for p in params]
        eps = scale * (1.0 + theta_norm) / v_norm
        saved = [p.detach().clone() for p in params]
        try:
            with torch.no_grad():
                for p, vi in zip(params, v):
                    p.add_(vi, alpha=eps)
            g_plus = gradient()
            with torch.no_grad():
                for p, s, vi in zip(params, saved, v):
                    p.copy_(s).sub_(vi, alpha=eps)
            g_minus = gradient()
        finally:
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)
        return [(a - b) / (2.0 * eps) for a, b in zip(g_plus, g_minus)]

    return hvp


def _random_unit(params: Sequence[torch.Tensor], seed: int) -> Vector:
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    v = [torch.randn(p.shape, generator=gen, dtype=torch.float32).to(device=p.device, dtype=p.dtype)
         for p in params]
    n = _norm(v)
    return [x / n for x in v]


def power_iteration(hvp: HvpFn, v0: Vector, iters: int, tol: float) -> dict[str, Any]:
    """Power iteration from the unit vector ``v0``.

    Two estimates per step: the Rayleigh quotient vᵀHv (signed: the eigenvalue) and ‖Hv‖ (the
    spectral norm |λ|max). They differ when H has eigenvalues of both signs with nearly equal
    magnitude (e.g. bilinear LoRA-like couplings): v then settles in their joint eigenspace, where
    ‖Hv‖ is still right but vᵀHv can be anything in between, which the reported ``residual``
    ‖Hv − λv‖/‖Hv‖ shows. Stops when both estimates changed by at most ``tol`` relative to their
    latest value.
    """
    v = v0
    history: list[float] = []
    norm = math.nan
    converged = False
    for _ in range(int(iters)):
        hv = hvp(v)
        lam = _dot(v, hv)
        history.append(lam)
        if not math.isfinite(lam):
            break
        prev_norm, norm = norm, _norm(hv)
        if norm == 0.0:             # v lies in the null space: every further estimate is 0
            converged = True
            break
        v = [x / norm for x in hv]
        if (len(history) > 1 and abs(lam - history[-2]) <= tol * max(abs(lam), 1e-30)
                and abs(norm - prev_norm) <= tol * norm):
            converged = True
            break
    lam = history[-1] if history else math.nan
    return {
        "eigenvalue": lam,
        "norm": norm,
        # ‖Hv − λv‖ / ‖Hv‖ = sqrt(1 − (λ/‖Hv‖)²): near 0 once v is an eigenvector; large when the
        # Rayleigh quotient is not an eigenvalue (eigenvalues ±λ of equal magnitude).
        "residual": math.sqrt(max(1.0 - (lam / norm) ** 2, 0.0)) if norm and math.isfinite(norm) else 0.0,
        "iterations": len(history),
        "converged": converged,
        "history": history,
    }


def _symmetry_defect(v0: Vector, h1: Vector, h2: Vector) -> float:
    """|v₀ᵀh₂ − ‖h₁‖| / ‖h₁‖ for h₁ = H v₀, h₂ = H (h₁/‖h₁‖): zero for a symmetric H."""
    n1 = _norm(h1)
    return 0.0 if n1 == 0.0 else abs(_dot(v0, h2) - n1) / n1


def top_eigenvalue(loss_fn: Callable[[], torch.Tensor], params: list[torch.Tensor], iters: int = 20,
                   tol: float = 1e-3, seed: int = 0, hvp: str = "auto", fd_scale: float | None = None,
                   check_rtol: float = 1e-2) -> dict[str, Any]:
    """Largest-magnitude eigenvalue of the Hessian of ``loss_fn()`` with respect to ``params``.

    ``loss_fn`` must compute the same function on every call (fixed batches, eval mode); it is called
    once (``autograd``) or twice per iteration (``finite_difference``). ``seed`` fixes the starting
    vector. With ``auto``, autograd products that fail the symmetry check by more than ``check_rtol``
    (see the module docstring) are replaced by finite differences.

    Returns ``eigenvalue`` (the last Rayleigh quotient), ``norm`` (the last ‖Hv‖, the spectral-norm
    estimate), ``residual`` (‖Hv − λv‖/‖Hv‖), ``iterations``, ``converged`` (both estimates changed
    by at most ``tol``, relatively, before ``iters`` ran out), ``history`` (every Rayleigh quotient),
    ``hvp`` (the mode used), ``num_params``, ``seconds``; ``hvp_check`` (the symmetry defect) when
    autograd ran, and ``fallback_reason`` when ``auto`` fell back.
    """
    if hvp not in HVP_MODES:
        raise unknown_choice("Hessian-vector product mode", hvp, HVP_MODES)
    params = list(params)
    if not params:
        raise ValueError("top_eigenvalue needs at least one parameter tensor")
    start = time.perf_counter()
    v0 = _random_unit(params, seed)
    extra: dict[str, Any] = {}
    cached: list[Vector] = []       # products already computed for the first power steps, in order
    op: HvpFn | None = None
    used = hvp
    if hvp != "finite_difference":
        try:
            op = autograd_hvp(loss_fn, params)
            h1 = op(v0)
            n1 = _norm(h1)
            h2 = op([x / n1 for x in h1]) if n1 > 0 else h1
            cached = [h1, h2] if n1 > 0 else [h1]
            used = "autograd"
            extra["hvp_check"] = defect = _symmetry_defect(v0, h1, h2)
            if hvp == "auto" and defect > check_rtol:
                extra["fallback_reason"] = (
                    f"autograd Hessian-vector products are not symmetric (defect {defect:.2g} > {check_rtol:g}): "
                    "a backward that is not fully twice differentiable")
        except RuntimeError as e:      # includes DoubleBackwardUnavailable and once_differentiable
            if hvp == "autograd":
                raise
            extra["fallback_reason"] = f"{type(e).__name__}: {e}".splitlines()[0]
        if "fallback_reason" in extra:
            op, cached, used = None, [], "finite_difference"
    if op is None:
        op = finite_difference_hvp(loss_fn, params, fd_scale)
    if cached:
        queue = list(reversed(cached))

        def op_with_cache(v: Vector, _op: HvpFn = op) -> Vector:
            return queue.pop() if queue else _op(v)

        op = op_with_cache
    result = power_iteration(op, v0, iters, tol)
    result.update(hvp=used, tol=float(tol), num_params=int(sum(p.numel() for p in params)),
                  seconds=round(time.perf_counter() - start, 3), **extra)
    return result
