"""Quadratic model along Adam's direction: the step that minimises the local quadratic model of the
loss along ``d = g_mean / (sqrt(v) + eps)``, ``lr* = (g . d) / (d . H d)`` (one Hessian-vector
product). It combines the first-order rate and the curvature the update actually meets; ``lr = c * lr*``
with ``c`` calibrated (how far below the one-step optimum a many-step run should stay).
"""

import math

from rmpeft.lr_auto.estimators.base import Estimator, Quantities


def optimal_step(q: Quantities) -> float:
    """``adam_rate / adam_curvature``; infinite when the curvature along ``d`` is not positive."""
    curvature = float(q["adam_curvature"])
    return float(q["adam_rate"]) / curvature if curvature > 0 else math.inf


ESTIMATOR = Estimator(
    name="quadratic",
    needs=("adam_rate", "adam_curvature"),
    scale=optimal_step,
    summary="c * (g.d)/(d.Hd), d = g/(sqrt(v)+eps): the step minimising the local quadratic along Adam's direction",
)
