"""Preconditioned curvature: the LR inversely proportional to Adam's preconditioned sharpness.

Adam steps ``lr * P^-1 g`` with ``P = diag(sqrt(v) + eps)``, so its stability is governed by the top
eigenvalue of ``P^-1 H`` (equal to that of the symmetric ``P^-1/2 H P^-1/2``), not by the raw
sharpness. ``v`` is estimated as the mean squared per-batch gradient over the measured batches (what
Adam's second moment averages). ``lr = c / preconditioned sharpness``, ``c`` calibrated.
"""

from rmpeft.lr_auto.estimators.base import Estimator, inverse

ESTIMATOR = Estimator(
    name="preconditioned",
    needs=("precond_sharpness",),
    scale=inverse("precond_sharpness"),
    summary="c / top eigenvalue of Adam's preconditioned Hessian P^-1 H, P = sqrt(v) + eps",
)
