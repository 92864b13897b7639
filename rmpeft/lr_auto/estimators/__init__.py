"""The registry of LR estimators: one module per estimator, each defining ``ESTIMATOR``."""

from __future__ import annotations

from rmpeft.errors import unknown_choice
from rmpeft.lr_auto.estimators import adam_eos, adam_rate, curvature, first_order, preconditioned, quadratic
from rmpeft.lr_auto.estimators.base import Estimator, Quantities

ESTIMATORS: dict[str, Estimator] = {
    m.ESTIMATOR.name: m.ESTIMATOR for m in (first_order, adam_rate, curvature, preconditioned, adam_eos, quadratic)
}


def get_estimator(name: str) -> Estimator:
    """The estimator called ``name``; a one-line error listing the valid names otherwise."""
    if name not in ESTIMATORS:
        raise unknown_choice("LR estimator", name, ESTIMATORS)
    return ESTIMATORS[name]


__all__ = ["ESTIMATORS", "Estimator", "Quantities", "get_estimator"]
