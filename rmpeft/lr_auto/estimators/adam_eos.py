"""Edge of stability for Adam (Cohen et al., "Adaptive Gradient Methods at the Edge of Stability",
2022): full-batch Adam with momentum ``beta1`` trains with the preconditioned sharpness hovering at
``(2 + 2 beta1) / ((1 - beta1) lr)`` (38 / lr for beta1 = 0.9), the stability threshold of its update
on a quadratic. Read backwards, the largest stable LR at the initial preconditioned sharpness is
``lr = (2 + 2 beta1) / ((1 - beta1) * preconditioned sharpness)``: a constant fixed by theory, not fitted.
"""

from collections.abc import Mapping
from typing import Any

from rmpeft.lr_auto.estimators.base import Estimator, inverse


def stability_constant(optim: Mapping[str, Any]) -> float:
    """``(2 + 2 beta1) / (1 - beta1)`` of the optimizer's ``betas``."""
    beta1 = float(list(optim.get("betas") or (0.9, 0.999))[0])
    return (2.0 + 2.0 * beta1) / (1.0 - beta1)


ESTIMATOR = Estimator(
    name="adam_eos",
    needs=("precond_sharpness",),
    scale=inverse("precond_sharpness"),
    summary="(2 + 2 beta1) / ((1 - beta1) * preconditioned sharpness): Adam's stability threshold, uncalibrated",
    theory_constant=stability_constant,
)
