"""``rmpeft-lr``: the learning rate a run would train at with ``optim.lr=auto``, and how well the
estimators predict the grids' best learning rates (docs/lr-prediction.md).

    rmpeft-lr experiment=cpu-study task=rte method=masking method.ratio=0.0001 seed=1
    rmpeft-lr experiment=smoke optim.lr_auto.estimator=quadratic --all
    rmpeft-lr --evaluate results/cpu-study                   # every cell of the records; cached measurements

The first form builds the run exactly as ``rmpeft-train`` would, measures ``optim.lr_auto.batches``
training batches before any update and prints the predicted LR with the quantities it came from
(``--all``: every estimator's prediction). ``--evaluate`` is :mod:`rmpeft.reporting.lr_prediction`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rmpeft.config import check_choices, compose_config
from rmpeft.errors import USAGE_EXIT, RmpeftError
from rmpeft.lr_auto.estimators import ESTIMATORS

QUANTITY_ORDER = ("loss", "grad_l1", "grad_l2", "adam_rate", "sharpness", "precond_sharpness", "adam_curvature")


def predict_overrides(overrides: list[str], every_estimator: bool = False) -> dict[str, Any]:
    """What an ``optim.lr=auto`` run of these overrides would record under ``lr_auto``."""
    from rmpeft.analysis.lr_measure import auto_lr, build_trained_run

    check_choices(overrides)
    run = build_trained_run(compose_config(overrides))
    return auto_lr(run, also=ESTIMATORS if every_estimator else ())


def describe(result: dict[str, Any]) -> list[str]:
    """The lines ``rmpeft-lr`` prints for a prediction."""
    q = result["quantities"]
    measured = ", ".join(f"{k} {q[k]:.4g}" for k in QUANTITY_ORDER if q.get(k) is not None)
    lines = [f"predicted lr {result['lr']:.3g}  ({result['estimator']}: constant {result['constant']:.4g}, "
             f"{result['constant_source']})",
             f"measured {q['batches']} batches ({q['examples']} examples, {q['num_trainable']} trainable entries) "
             f"in {result['seconds']:.1f} s: {measured}"]
    for name, lr in (result.get("predictions") or {}).items():
        lines.append(f"  {name:15s} {'no constant' if lr is None else f'{lr:.3g}'}")
    return lines


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rmpeft-lr", description=__doc__.split("\n\n")[0],
                                epilog="Evaluation options (with --evaluate): see rmpeft-lr --evaluate DIR --help")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, as for rmpeft-train")
    p.add_argument("--all", action="store_true", help="measure for, and print, every estimator")
    p.add_argument("--json", action="store_true", help="print the prediction as one JSON object")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--evaluate" in argv or any(a.startswith("--evaluate=") for a in argv):
        from rmpeft.reporting.lr_prediction import evaluate_main

        return evaluate_main(argv)
    args = parser().parse_args(argv)
    try:
        result = predict_overrides(args.overrides, args.all)
    except RmpeftError as e:
        print(f"rmpeft-lr: error: {e}", file=sys.stderr)
        return USAGE_EXIT
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print("\n".join(describe(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
