"""Curvature: the LR inversely proportional to the sharpness of the loss restricted to the trainable
entries (the Hessian eigenvalue of largest magnitude, by power iteration, :mod:`rmpeft.analysis.hessian`).

For gradient descent the largest stable step is ``2 / sharpness``; the paper's Section 5 argues that a
sparser mask sees a flatter restricted loss (the restricted Hessian is a principal submatrix of the
full one) and so tolerates a larger step. ``lr = c / sharpness`` with ``c`` calibrated (Adam does not
step like gradient descent, so ``c`` is not 2).
"""

from rmpeft.lr_auto.estimators.base import Estimator, inverse

ESTIMATOR = Estimator(
    name="curvature",
    needs=("sharpness",),
    scale=inverse("sharpness"),
    summary="c / top Hessian eigenvalue restricted to the trainable entries",
)
