"""The delta commands: ``rmpeft-export``, ``rmpeft-eval`` and ``rmpeft-merge``.

    rmpeft-export results/runs/default/opt-125m/rte/masking-r0.0001/lr0.01/seed0-<hash> --out rte-mask.delta
    rmpeft-eval rte-mask.delta                      # its own validation and test sets again
    rmpeft-eval rte-mask.delta task=cb task.num_test=200
    rmpeft-merge rte-mask.delta --out opt-125m-rte-merged

A bad argument or an unusable delta ends in one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable

from rmpeft.errors import RmpeftError


def _run(prog: str, body: Callable[[], None]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        body()
    except RmpeftError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    return 0


def export_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="rmpeft-export", description="Write the trained delta of a finished run "
                                 "(safetensors + delta.json, see docs/deltas.md) to a new folder.")
    ap.add_argument("run_dir", type=Path, help="a run folder (holds record.json and delta/)")
    ap.add_argument("--out", type=Path, required=True, help="the delta folder to create")
    args = ap.parse_args(argv)

    def body() -> None:
        from rmpeft.deltas.export import export_run

        meta = export_run(args.run_dir, args.out)
        print(f"{args.out}: {meta['method']} delta, {meta['bytes']} bytes, fingerprint {meta['fingerprint']}")

    return _run("rmpeft-export", body)


def eval_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="rmpeft-eval", description="Apply a delta to its base model and evaluate "
                                 "it (no training); writes an ordinary run record.")
    ap.add_argument("delta", type=Path, help="a delta folder (rmpeft-export, or a run's delta/)")
    ap.add_argument("overrides", nargs="*", help="task=<name>, model=<name>, a.b=value (e.g. task.num_test=200)")
    args = ap.parse_args(argv)

    def body() -> None:
        from rmpeft.deltas.evaluate import eval_config, evaluate_delta
        from rmpeft.deltas.format import open_delta

        delta = open_delta(args.delta)
        rec = evaluate_delta(delta, eval_config(delta, args.overrides))
        print(f"{rec['run_dir']}: status={rec['status']} val={rec['val_metric']} test={rec['test_metric']}"
              + (" (already evaluated; force=true reruns it)" if rec.get("skipped") else ""))

    return _run("rmpeft-eval", body)


def merge_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="rmpeft-merge", description="Merge a delta into its base model's weights "
                                 "and save a plain Hugging Face checkpoint.")
    ap.add_argument("delta", type=Path, help="a delta folder")
    ap.add_argument("--out", type=Path, required=True, help="the checkpoint folder to create")
    ap.add_argument("--cache-dir", help="where random-init and converted base models live (default: the run's)")
    args = ap.parse_args(argv)

    def body() -> None:
        from rmpeft.deltas.format import open_delta
        from rmpeft.deltas.merge import merge_delta

        out = merge_delta(open_delta(args.delta), args.out, args.cache_dir)
        print(f"{out}: merged checkpoint (AutoModelForCausalLM.from_pretrained('{out}'))")

    return _run("rmpeft-merge", body)


def main_export() -> None:
    sys.exit(export_main())


def main_eval() -> None:
    sys.exit(eval_main())


def main_merge() -> None:
    sys.exit(merge_main())
