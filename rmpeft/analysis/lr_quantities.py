"""What the LR estimators (:mod:`rmpeft.lr_auto`) read, computed from per-batch gradients and Hessian-vector products of the
loss restricted to the trainable entries (pure math on lists of tensors, no run).

From the gradients ``g_b`` of the measured batches:

``grad_l1``, ``grad_l2``
    norms of the mean gradient ``g = mean_b g_b``;
``adam_rate``
    ``sum(g**2 / (sqrt(v) + eps))`` with ``v = mean_b g_b**2``: the loss decrease per unit LR of an Adam
    step once its moments have settled (first order).

From Hessian-vector products of the loss of the first measured batch (power iteration,
:func:`rmpeft.analysis.hessian.power_iteration`):

``sharpness``
    ``|lambda|max`` of ``H`` (the spectral-norm estimate ``||Hv||``);
``precond_sharpness``
    ``|lambda|max`` of ``P^-1/2 H P^-1/2``, ``P = sqrt(v) + eps`` (same spectrum as Adam's ``P^-1 H``);
``adam_curvature``
    ``d . H d`` along Adam's direction ``d = g / P`` (one product).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from rmpeft.analysis.hessian import HvpFn, Vector, power_iteration

GRADIENT_QUANTITIES = ("grad_l1", "grad_l2", "adam_rate")
CURVATURE_QUANTITIES = ("sharpness", "precond_sharpness", "adam_curvature")
QUANTITIES = ("loss",) + GRADIENT_QUANTITIES + CURVATURE_QUANTITIES


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b)))


def gradient_moments(batch_grads: Sequence[Vector]) -> tuple[Vector, Vector]:
    """(mean gradient, mean squared gradient) over batches: Adam's first and second moments without decay."""
    n = len(batch_grads)
    mean = [sum(g[i] for g in batch_grads) / n for i in range(len(batch_grads[0]))]
    square = [sum(g[i] ** 2 for g in batch_grads) / n for i in range(len(batch_grads[0]))]
    return mean, square


def preconditioner(second_moment: Vector, eps: float) -> Vector:
    """Adam's denominator ``sqrt(v) + eps``."""
    return [v.sqrt() + eps for v in second_moment]


def gradient_quantities(mean: Vector, precond: Vector) -> dict[str, float]:
    """``grad_l1``, ``grad_l2`` and ``adam_rate`` of the mean gradient and Adam's denominator."""
    return {
        "grad_l1": float(sum(g.abs().sum(dtype=torch.float64) for g in mean)),
        "grad_l2": math.sqrt(_dot(mean, mean)),
        "adam_rate": float(sum((g * g / p).sum(dtype=torch.float64) for g, p in zip(mean, precond))),
    }


def random_unit(like: Sequence[torch.Tensor], seed: int) -> Vector:
    """A random unit vector shaped like ``like`` (fixed by ``seed``)."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    v = [torch.randn(p.shape, generator=gen, dtype=torch.float32).to(device=p.device, dtype=p.dtype) for p in like]
    n = math.sqrt(_dot(v, v))
    return [x / n for x in v]


def scaled_operator(hvp: HvpFn, scale: Vector) -> HvpFn:
    """``x -> S H S x`` for the diagonal ``S`` (``P^-1/2 H P^-1/2`` with ``S = P^-1/2``)."""

    def op(x: Vector) -> Vector:
        hx = hvp([s.to(xi.dtype) * xi for s, xi in zip(scale, x)])
        return [s.to(h.dtype) * h for s, h in zip(scale, hx)]

    return op


def top_magnitude(op: HvpFn, like: Sequence[torch.Tensor], iters: int, seed: int) -> dict[str, Any]:
    """Power iteration for ``op`` from a seeded random start (``iters`` products, no early stop)."""
    result = power_iteration(op, random_unit(like, seed), iters, tol=0.0)
    return {"norm": result["norm"], "eigenvalue": result["eigenvalue"], "residual": result["residual"],
            "iterations": result["iterations"]}


def curvature_quantities(hvp: HvpFn, params: Sequence[torch.Tensor], mean: Vector, precond: Vector,
                         wanted: Sequence[str], iters: int, seed: int) -> dict[str, Any]:
    """The ``wanted`` curvature quantities (``sharpness``, ``precond_sharpness``, ``adam_curvature``) and
    the details of each power iteration (under ``<quantity>_detail``)."""
    out: dict[str, Any] = {}
    if "sharpness" in wanted:
        detail = top_magnitude(hvp, params, iters, seed)
        out.update(sharpness=detail["norm"], sharpness_detail=detail)
    if "precond_sharpness" in wanted:
        scale = [p.rsqrt() for p in precond]
        detail = top_magnitude(scaled_operator(hvp, scale), params, iters, seed)
        out.update(precond_sharpness=detail["norm"], precond_sharpness_detail=detail)
    if "adam_curvature" in wanted:
        direction = [(g / p).to(q.dtype) for g, p, q in zip(mean, precond, params)]
        out["adam_curvature"] = _dot(direction, hvp(direction))
    return out
