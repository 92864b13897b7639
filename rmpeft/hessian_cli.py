"""``rmpeft-hessian RUN_DIR``: sharpness of a saved run, written into its record.

The run is rebuilt from the resolved config in its ``record.json`` (same model, data sample, method,
mask and initialisation, via ``rmpeft.run.build_run``). ``before`` is measured at that
initialisation; ``after`` at the trained state of the best validation epoch: the run's delta
(``<run_dir>/delta``, kept by default, see docs/deltas.md) applied to the base model, or, for runs
from before deltas, ``trainable.pt`` (the trainable tensors in ``handle.trainable_parameters()`` order). The loss is the mean training loss over the first
``analysis.hessian_batches`` training batches in eval mode, as for ``analysis.hessian=true`` during
training. Results go to the record's ``hessian`` field (``{"before": {...}, "after": {...}}``),
written atomically; other fields are left as they are.

    rmpeft-hessian results/runs/default/opt-125m/sst2/masking-r0.001/lr0.01/seed0
    rmpeft-hessian RUN_DIR --phase after --iters 50 --tol 1e-4 --batches 8 --hvp finite_difference
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Any

from rmpeft.analysis.hessian import HVP_MODES
from rmpeft.analysis.sharpness import SPARSE_BACKEND_CHOICES, measure_run
from rmpeft.deltas.apply import build_delta_run
from rmpeft.deltas.export import DELTA_DIR, LEGACY_TRAINABLE_FILE, load_trainable
from rmpeft.methods.delta_format import META_FILE, open_delta
from rmpeft.errors import USAGE_EXIT, RmpeftError, unknown_choice
from rmpeft.records import read_record, write_record
from rmpeft.run import Run, build_run
from rmpeft.validation import Float, Int, check_value

__all__ = ["PHASES", "TRAINABLE_FILE", "compute", "load_trainable", "main", "parse_args"]

PHASES = ("before", "after", "both")
PHASES_OF = {"before": ("before",), "after": ("after",), "both": ("before", "after")}
TRAINABLE_FILE = LEGACY_TRAINABLE_FILE


def _config(record: dict[str, Any], args: argparse.Namespace):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(record["config"])
    OmegaConf.set_struct(cfg, False)
    cfg.trainer.progress = False
    if args.device is not None:
        cfg.trainer.device = args.device
    if args.precision != "run":
        cfg.trainer.precision = args.precision
    for key, value in (("hessian_iters", args.iters), ("hessian_tol", args.tol), ("hessian_batches", args.batches)):
        if value is not None:
            cfg.analysis[key] = value
    return cfg


def _measured(result: Any) -> bool:
    value = result.get("eigenvalue") if isinstance(result, dict) else None
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def compute(run_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Measure the requested phases and write them into the run's record; returns what was measured.
    A phase that yields no finite eigenvalue never replaces one measured before (it is reported on
    stderr and the record keeps the earlier value)."""
    record = read_record(run_dir)
    if record is None:
        raise RmpeftError(f"no run record at {run_dir / 'record.json'}")
    if not isinstance(record.get("config"), dict):
        raise RmpeftError(f"run record {run_dir / 'record.json'} has no resolved config")
    phases = ["before", "after"] if args.phase == "both" else [args.phase]
    trainable, delta = run_dir / TRAINABLE_FILE, run_dir / DELTA_DIR
    has_delta = (delta / META_FILE).is_file()
    if "after" in phases and not has_delta and not trainable.exists():
        raise RmpeftError(f"{run_dir} kept no trained state ({DELTA_DIR}/ or {TRAINABLE_FILE}): rerun the training "
                          f"with trainer.save_delta=always force=true (or use --phase before)")
    cfg = _config(record, args)
    seed = int(cfg.seed) if args.seed is None else int(args.seed)
    run: Run | None = None
    hessian = dict(record.get("hessian") or {})
    for phase in phases:
        if phase == "after" and has_delta:
            run = build_delta_run(open_delta(delta), cfg)
        elif run is None:
            run = build_run(cfg)
        if phase == "after" and not has_delta:
            load_trainable(trainable, run.handle.trainable_parameters())
        result = measure_run(run, args.hvp, seed, args.sparse_backend)
        result["source"] = "rmpeft-hessian"
        print(f"{phase}: eigenvalue {_number(result.get('eigenvalue'))}, norm {_number(result.get('norm'))} "
              f"({'converged' if result['converged'] else 'NOT converged'}"
              f" after {result['iterations']} iterations, {result['hvp']} Hessian-vector products, "
              f"{result['num_params']} parameters, {result['seconds']:.1f} s)")
        # Re-read so that a record rewritten meanwhile (e.g. a finished run) keeps its other fields.
        latest = read_record(run_dir) or record
        kept = (latest.get("hessian") or {}).get(phase)
        hessian[phase] = result
        if not _measured(result) and _measured(kept):
            print(f"rmpeft-hessian: {phase}: no eigenvalue measured; the recorded eigenvalue "
                  f"{kept['eigenvalue']:.6g} is kept", file=sys.stderr)
            continue
        latest["hessian"] = {**(latest.get("hessian") or {}), phase: result}
        write_record(run_dir, latest)
    return hessian


def _number(x: Any) -> str:
    return f"{x:.6g}" if isinstance(x, (int, float)) and not isinstance(x, bool) else str(x)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="rmpeft-hessian",
        description="Largest Hessian eigenvalue of the training loss w.r.t. the trainable parameters of a "
                    "saved run (before and/or after training); written into the run's record.json.")
    ap.add_argument("run_dir", type=Path, help="a run folder (holds record.json, and delta/ for 'after')")
    ap.add_argument("--phase", default="both", help="before | after | both (default %(default)s)")
    ap.add_argument("--iters", type=int, help="power iterations (default: the run's analysis.hessian_iters)")
    ap.add_argument("--tol", type=float, help="relative tolerance (default: the run's analysis.hessian_tol)")
    ap.add_argument("--batches", type=int, help="training batches in the loss (default: analysis.hessian_batches)")
    ap.add_argument("--hvp", default="auto", help="auto | autograd | finite_difference (default %(default)s)")
    ap.add_argument("--seed", type=int, help="seed of the starting vector (default: the run's seed)")
    ap.add_argument("--device", help="auto | cpu | cuda (default: the run's trainer.device)")
    ap.add_argument("--precision", default="fp32",
                    help="fp32 | bf16 | fp16 | run (the run's trainer.precision); default %(default)s, "
                         "since curvature estimates need full precision")
    ap.add_argument("--sparse-backend", default="dense",
                    help="dense | run: masked layers computed with the dense reference backend (exact double "
                         "backward; one dense delta per masked matrix) or the run's own (default %(default)s)")
    args = ap.parse_args(argv)
    if args.phase not in PHASES:
        raise unknown_choice("--phase", args.phase, PHASES)
    if args.hvp not in HVP_MODES:
        raise unknown_choice("--hvp", args.hvp, HVP_MODES)
    if args.sparse_backend not in SPARSE_BACKEND_CHOICES:
        raise unknown_choice("--sparse-backend", args.sparse_backend, SPARSE_BACKEND_CHOICES)
    if args.precision not in ("fp32", "bf16", "fp16", "run"):
        raise unknown_choice("--precision", args.precision, ("fp32", "bf16", "fp16", "run"))
    for flag, value, spec in (("--iters", args.iters, Int(1)), ("--batches", args.batches, Int(1)),
                              ("--tol", args.tol, Float(0, low_open=True))):
        if value is not None:
            check_value(flag, value, spec)
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args = parse_args(argv)
        hessian = compute(args.run_dir, args)
    except RmpeftError as e:
        print(f"rmpeft-hessian: error: {e}", file=sys.stderr)
        return USAGE_EXIT
    return 0 if all(_measured(hessian.get(p)) for p in PHASES_OF[args.phase]) else 1


if __name__ == "__main__":
    sys.exit(main())
