"""``rmpeft-sweep FILE lr_grid=auto:K``: each cell's learning-rate grid replaced by K points half a
decade apart centred on the LR predicted for it (``optim.lr=auto``, docs/lr-prediction.md).

A cell is one combination of a sub-grid's values other than the learning rate and the seeds; its
prediction is made before anything is launched, on the run of its first seed (one prediction per
cell, so that every seed runs the same grid and the table aggregates them); its measured quantities
are cached in ``<cache_dir>/lr_auto/`` under the identity of the ``optim.lr=auto`` run (its constant
left out: a recalibration reuses them). The runs themselves get plain numeric LRs: each is the
ordinary run of that LR (its folder, identity and record as any other).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from omegaconf import open_dict

from rmpeft.config import compose_run
from rmpeft.errors import RmpeftError
from rmpeft.lr_auto.predict import half_decade_grid, predict
from rmpeft.lr_auto.settings import AUTO, LRAutoSettings
from rmpeft.records import identity_hash
from rmpeft.sweeps.spec import Axis, SweepFile, override_key, parse_override

LR_GRID = "lr_grid"
LR_KEY = "optim.lr"
SEED_KEYS = ("seed", "data_seed")
_VALUE = re.compile(r"auto:([0-9]+)")

Predict = Callable[[list[str]], float]   # a run's overrides -> its predicted LR


def split_lr_grid(overrides: Sequence[str]) -> tuple[int | None, list[str]]:
    """``(K, the other overrides)`` of ``lr_grid=auto:K`` among command-line overrides (K None when absent)."""
    points, rest = None, []
    for text in overrides:
        key, _, value = text.partition("=")
        if key != LR_GRID:
            rest.append(text)
            continue
        match = _VALUE.fullmatch(value)
        if not match or int(match.group(1)) < 1:
            raise RmpeftError(f"{LR_GRID}='{value}' is invalid; expected auto:K with K a positive integer "
                              f"(e.g. {LR_GRID}=auto:3)")
        points = int(match.group(1))
    return points, rest


def predict_with_cache(overrides: list[str]) -> float:
    """The LR an ``optim.lr=auto`` run of ``overrides`` would predict (Hydra must be initialised); cached
    per identity in ``<cache_dir>/lr_auto/``."""
    from rmpeft.analysis.lr_measure import auto_lr, build_trained_run
    from rmpeft.resolve import resolve_run_config

    cfg = compose_run([o for o in overrides if override_key(parse_override(o)) != LR_KEY])
    with open_dict(cfg):
        cfg.optim.lr = AUTO
    resolved = resolve_run_config(cfg.copy())
    measured = resolved.copy()   # what the measurement depends on: the identity but the constant
    with open_dict(measured):
        measured.optim.lr_auto.constant = None
    cache = Path(str(cfg.cache_dir)).expanduser() / "lr_auto" / f"{identity_hash(measured)}.json"
    if cache.is_file():
        settings = LRAutoSettings.from_config(resolved.optim)
        return float(predict(json.loads(cache.read_text())["quantities"], settings.estimator, resolved.optim,
                             settings.constant)["lr"])
    result = auto_lr(build_trained_run(cfg))
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return float(result["lr"])


def predicted_grid_sweep(sweep: SweepFile, points: int, predict: Predict = predict_with_cache,
                         say: Callable[[str], None] = print) -> SweepFile:
    """``sweep`` with each cell's LR values replaced by ``points`` LRs half a decade apart centred on the
    cell's prediction. Cells whose method trains nothing keep their values."""
    fixed = tuple(o for o in sweep.fixed if override_key(parse_override(o)) != LR_KEY)
    grids: list[tuple[Axis, ...]] = []
    for axes in sweep.grid_axes():
        cell_axes = [a for a in axes if a.key != LR_KEY and a.key not in SEED_KEYS]
        seed_axes = [a for a in axes if a.key in SEED_KEYS]
        for combo in itertools.product(*(a.overrides for a in cell_axes)):
            first_seed = [a.overrides[0] for a in seed_axes]
            try:
                lr = predict(list(fixed + combo) + first_seed)
            except RmpeftError as e:
                if "trains nothing" not in str(e):
                    raise
                grids.append(tuple(Axis(a.key, (o,)) for a, o in zip(cell_axes, combo)) + tuple(seed_axes)
                             + tuple(a for a in axes if a.key == LR_KEY))
                continue
            grid = half_decade_grid(lr, points)
            say(f"{LR_GRID}=auto:{points}: {' '.join(combo + tuple(first_seed))}: predicted lr {lr:.3g} -> "
                + ", ".join(f"{x:g}" for x in grid))
            grids.append(tuple(Axis(a.key, (o,)) for a, o in zip(cell_axes, combo)) + tuple(seed_axes)
                         + (Axis(LR_KEY, tuple(f"{LR_KEY}={x:g}" for x in grid)),))
    return replace(sweep, fixed=fixed, params=(), grids=tuple(grids))
