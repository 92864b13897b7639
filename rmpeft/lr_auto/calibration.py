"""Each estimator's constant, calibrated once per optimizer on known best learning rates.

An estimator predicts ``lr = c * scale(quantities)``; on a set of cells with a known best LR the
constant is ``log10 c = median(log10 best_lr - log10 scale)`` (the median: one odd cell does not move
it). When an estimator is judged, its constant comes from the other tasks only
(:func:`leave_one_task_out`), never from the cell judged or its task. The constants shipped with the
package (``constants.json``, written by ``rmpeft-lr --evaluate RESULTS_DIR --write-constants``) were fitted on
every cell of the named records; a run can set its own with ``optim.lr_auto.constant``.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmpeft.errors import RmpeftError
from rmpeft.lr_auto.estimators.base import Estimator

CONSTANTS_FILE = Path(__file__).with_name("constants.json")


@dataclass(frozen=True)
class Point:
    """One cell with a known best LR, seen through one estimator."""

    task: str
    cell: str                  # the cell's name, for messages
    log10_best_lr: float
    log10_scale: float         # log10 of the estimator's scale (the LR at constant 1)

    @property
    def log10_constant(self) -> float:
        return self.log10_best_lr - self.log10_scale


def fit_constant(points: Iterable[Point]) -> float | None:
    """``log10 c``: the median of the points' ``log10 best_lr - log10 scale``; None without points."""
    values = [p.log10_constant for p in points]
    return statistics.median(values) if values else None


def leave_one_task_out(points: Iterable[Point], judged_task: str) -> tuple[float | None, int]:
    """``(log10 c, points used)`` fitted on the points of every task but ``judged_task``."""
    train = [p for p in points if p.task != judged_task]
    return fit_constant(train), len(train)


def leave_one_cell_out(points: Iterable[Point], judged_cell: str) -> tuple[float | None, int]:
    """``(log10 c, points used)`` fitted on every point but the judged cell's (same task allowed: a
    weaker protocol, for when the records hold one task only)."""
    train = [p for p in points if p.cell != judged_cell]
    return fit_constant(train), len(train)


def shipped_constants(path: Path = CONSTANTS_FILE) -> dict[str, Any]:
    """The calibrated constants shipped with the package: ``{optimizer: {estimator: {...}}}``."""
    return json.loads(path.read_text()) if path.is_file() else {}


def estimator_constant(estimator: Estimator, optim: Mapping[str, Any], override: float | None = None,
                       path: Path = CONSTANTS_FILE) -> tuple[float, str]:
    """``(c, where it came from)`` for ``estimator`` under the optimizer config ``optim``: the override
    (``optim.lr_auto.constant``), else the theory constant, else the shipped calibration."""
    if estimator.theory_constant is not None:
        default = estimator.theory_constant(optim), "theory"
    else:
        name = str(optim.get("name"))
        entry = shipped_constants(path).get(name, {}).get(estimator.name)
        if entry is None and override is None:
            raise RmpeftError(f"LR estimator '{estimator.name}' has no calibrated constant for optimizer '{name}'; "
                              f"set optim.lr_auto.constant or calibrate it (rmpeft-lr --evaluate RESULTS_DIR "
                              f"--write-constants)")
        default = (float(entry["constant"]), f"calibrated on {entry['source']}") if entry else (math.nan, "")
    if override is None:
        return default
    same = math.isclose(float(override), default[0], rel_tol=1e-9)
    return float(override), "optim.lr_auto.constant" + (f" ({default[1]})" if same else "")


def resolved_constant(estimator: Estimator, optim: Mapping[str, Any], path: Path = CONSTANTS_FILE) -> float:
    """The constant an ``optim.lr=auto`` run of this optimizer config uses: what
    :func:`rmpeft.resolve.resolve_run_config` writes into ``optim.lr_auto.constant``, so that a run's
    identity names its constant and a recalibration makes a different run."""
    lr_auto = optim.get("lr_auto") or {}
    return estimator_constant(estimator, optim, lr_auto.get("constant"), path)[0]


def write_constants(fitted: Mapping[str, Mapping[str, float | None]], counts: Mapping[str, Mapping[str, int]],
                    source: str, path: Path = CONSTANTS_FILE) -> None:
    """Store ``{optimizer: {estimator: log10 c}}`` fitted on all cells of ``source`` (replacing those
    optimizers' entries; estimators without a fit are left out)."""
    data = shipped_constants(path)
    for optimizer, by_estimator in fitted.items():
        data[optimizer] = {name: {"log10_constant": round(value, 4), "constant": float(f"{10 ** value:.4g}"),
                                  "cells": counts[optimizer][name], "source": source}
                           for name, value in sorted(by_estimator.items()) if value is not None and math.isfinite(value)}
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
