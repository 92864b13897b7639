"""First order along Adam's settled direction: the LR at which a step lowers the loss by a target.

After a few steps Adam's update is ``lr * m / (sqrt(v) + eps)`` with ``m`` ~ the mean gradient and
``v`` ~ the mean squared per-batch gradient; the predicted loss decrease per unit of LR is
``adam_rate = sum(g_mean**2 / (sqrt(v) + eps))``. Unlike ``||g||_1`` it discounts entries whose
gradient is mostly batch noise (``|g_mean| << sqrt(v)``). ``lr = target / adam_rate``, the target
decrease being the calibrated constant.
"""

from rmpeft.lr_auto.estimators.base import Estimator, inverse

ESTIMATOR = Estimator(
    name="adam_rate",
    needs=("adam_rate",),
    scale=inverse("adam_rate"),
    summary="target loss decrease / sum(g^2 / sqrt(v)) (first order along Adam's direction)",
)
