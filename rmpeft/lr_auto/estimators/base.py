"""What an LR estimator is: a rule ``lr = constant * scale(quantities)``.

``scale`` turns the quantities measured on a few training batches before any update
(:mod:`rmpeft.lr_auto.quantities`) into a learning rate up to one constant. The constant is either
calibrated once per optimizer on known best learning rates (:mod:`rmpeft.lr_auto.calibration`), or,
for an estimator taken whole from the literature, fixed by theory (``theory_constant``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rmpeft.errors import RmpeftError

Quantities = Mapping[str, Any]


@dataclass(frozen=True)
class Estimator:
    """One LR estimator. ``needs``: the quantities ``scale`` reads (what must be measured)."""

    name: str
    needs: tuple[str, ...]
    scale: Callable[[Quantities], float]
    summary: str
    # A constant fixed by theory from the optimizer's settings (betas, ...); None: calibrated.
    theory_constant: Callable[[Mapping[str, Any]], float] | None = None

    @property
    def calibrated(self) -> bool:
        return self.theory_constant is None

    def lr_scale(self, quantities: Quantities) -> float:
        """``scale(quantities)``; a one-line error when a needed quantity is missing or the scale is not a
        positive finite number (e.g. a zero gradient)."""
        missing = [k for k in self.needs if quantities.get(k) is None]
        if missing:
            raise RmpeftError(f"LR estimator '{self.name}' needs the measured {', '.join(missing)}")
        value = float(self.scale(quantities))
        if not (math.isfinite(value) and value > 0):
            detail = ", ".join(f"{k}={quantities[k]:.3g}" for k in self.needs)
            raise RmpeftError(f"LR estimator '{self.name}' has no positive finite estimate ({detail})")
        return value


def inverse(quantity: str) -> Callable[[Quantities], float]:
    """``scale = 1 / quantity``, infinite for a non-positive quantity (refused by :meth:`Estimator.lr_scale`)."""

    def scale(q: Quantities) -> float:
        value = float(q[quantity])
        return 1.0 / value if value > 0 else math.inf

    return scale
