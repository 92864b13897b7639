"""Measured quantities -> a predicted learning rate."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rmpeft.errors import RmpeftError
from rmpeft.lr_auto.calibration import estimator_constant
from rmpeft.lr_auto.estimators import get_estimator

LR_DIGITS = 3   # significant digits of a predicted grid point (its folder name stays short)


def optim_mapping(optim: Any) -> dict[str, Any]:
    """The ``optim`` config as a plain dict."""
    return OmegaConf.to_container(optim, resolve=True) if isinstance(optim, DictConfig) else dict(optim)


def predict(quantities: Mapping[str, Any], estimator: str, optim: Any, constant: float | None = None) -> dict[str, Any]:
    """``{"lr", "constant", "constant_source"}``: the LR ``estimator`` predicts from ``quantities`` under
    the optimizer config ``optim`` (``constant``: replaces the calibrated or theory constant)."""
    est = get_estimator(estimator)
    scale = est.lr_scale(quantities)
    c, source = estimator_constant(est, optim_mapping(optim), constant)
    return {"lr": c * scale, "constant": c, "constant_source": source}


def predict_all(quantities: Mapping[str, Any], estimators: Iterable[str], optim: Any) -> dict[str, float | None]:
    """The LR of each estimator (None where it has no constant or no positive estimate)."""
    out: dict[str, float | None] = {}
    for name in estimators:
        try:
            out[name] = predict(quantities, name, optim)["lr"]
        except RmpeftError:
            out[name] = None
    return out


def rounded_lr(lr: float, digits: int = LR_DIGITS) -> float:
    """``lr`` to ``digits`` significant digits."""
    return float(f"{lr:.{digits}g}") if math.isfinite(lr) and lr > 0 else lr


def half_decade_grid(centre: float, points: int) -> list[float]:
    """``points`` learning rates half a decade apart (factor 10**0.5) centred on ``centre`` (rounded)."""
    if points < 1:
        raise RmpeftError(f"an LR grid needs at least 1 point, got {points}")
    return [rounded_lr(centre * 10 ** (0.5 * (i - (points - 1) / 2))) for i in range(points)]
