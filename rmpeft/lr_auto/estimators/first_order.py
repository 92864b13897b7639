"""First order: the LR at which Adam's first step lowers the loss by a target amount.

In its first steps Adam moves every trainable entry by about ``lr`` in the direction of the sign of
its gradient, so the loss falls by about ``lr * ||g||_1`` (first order, ``g`` the gradient restricted
to the trainable entries). Solving ``lr * ||g||_1 = target`` gives ``lr = target / ||g||_1``; the
target decrease (in loss units) is the calibrated constant. A sparser mask has a smaller ``||g||_1``
(fewer entries), hence a larger LR: in proportion to the inverse density when gradients are spread
evenly over the entries.
"""

from rmpeft.lr_auto.estimators.base import Estimator, inverse

ESTIMATOR = Estimator(
    name="first_order",
    needs=("grad_l1",),
    scale=inverse("grad_l1"),
    summary="target loss decrease / ||g_trainable||_1 (Adam's first steps move each entry by ~lr)",
)
