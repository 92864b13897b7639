"""The delta commands: ``rmpeft-export``, ``rmpeft-eval`` and ``rmpeft-merge``.

    rmpeft-export results/runs/default/opt-125m/rte/masking-r0.0001/lr0.01/seed0-<hash> --out rte-mask.delta
    rmpeft-eval rte-mask.delta                      # its own validation and test sets again
    rmpeft-eval rte-mask.delta task=cb task.num_test=200
    rmpeft-merge rte-mask.delta --out opt-125m-rte-merged
    rmpeft-export rte-mask.delta --format peft --out rte-mask.peft   # PeftModel.from_pretrained loads it
    rmpeft-eval rte-mask.peft                       # a peft folder evaluates as its delta does
    rmpeft-eval shira-adapter model=opt-125m task=rte   # a SHiRA / Super-Tuning adapter trained elsewhere

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
    ap.add_argument("run_dir", type=Path, help="a run folder (holds record.json and delta/); with --format peft "
                    "also a delta folder")
    ap.add_argument("--out", type=Path, required=True, help="the folder to create")
    ap.add_argument("--format", choices=("rmpeft", "peft"), default="rmpeft",
                    help="rmpeft: the delta folder (default); peft: a peft adapter folder (docs/deltas.md)")
    ap.add_argument("--peft-type", choices=("auto", "shira", "supertuning"), default="auto",
                    help="masking deltas with --format peft: SHiRA or Super-Tuning (auto: fewest bytes)")
    args = ap.parse_args(argv)

    def body() -> None:
        if args.format == "peft":
            from rmpeft.deltas.peft_export import export_peft_folder

            meta = export_peft_folder(args.run_dir, args.out, args.peft_type)
            a = meta["adapter"]
            stored = f", {a['entries']} entries stored as {a['stored_entries']}" if "stored_entries" in a else ""
            print(f"{args.out}: {meta['delta']['method']} delta as a peft {a['peft_type']} adapter, "
                  f"{meta['bytes']} bytes{stored}")
            return
        if args.peft_type != "auto":
            raise RmpeftError("--peft-type needs --format peft")
        from rmpeft.deltas.export import export_run

        meta = export_run(args.run_dir, args.out)
        print(f"{args.out}: {meta['method']} delta, {meta['bytes']} bytes, fingerprint {meta['fingerprint']}")

    return _run("rmpeft-export", body)


def eval_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="rmpeft-eval", description="Apply a delta to its base model and evaluate "
                                 "it (no training); writes an ordinary run record.")
    ap.add_argument("delta", type=Path, help="a delta folder (rmpeft-export, or a run's delta/) or a peft "
                    "adapter folder (rmpeft-export --format peft, or a SHiRA / Super-Tuning adapter)")
    ap.add_argument("overrides", nargs="*", help="task=<name>, model=<name>, a.b=value (e.g. task.num_test=200)")
    args = ap.parse_args(argv)

    def body() -> None:
        from rmpeft.deltas.evaluate import eval_config, evaluate_delta
        from rmpeft.deltas.peft_import import open_any

        delta = open_any(args.delta, args.overrides)
        composed = getattr(delta, "composed", False)     # an adapter trained elsewhere: overrides applied
        rec = evaluate_delta(delta, eval_config(delta, [] if composed else args.overrides))
        print(f"{rec['run_dir']}: status={rec['status']} val={rec['val_metric']} test={rec['test_metric']}"
              + (" (already evaluated; force=true reruns it)" if rec.get("skipped") else ""))

    return _run("rmpeft-eval", body)


def merge_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="rmpeft-merge", description="Merge a delta into its base model's weights "
                                 "and save a plain Hugging Face checkpoint.")
    ap.add_argument("delta", type=Path, help="a delta folder, or a peft adapter folder")
    ap.add_argument("overrides", nargs="*", help="a SHiRA / Super-Tuning adapter trained elsewhere: model=<name>, "
                    "model.name_or_path=...")
    ap.add_argument("--out", type=Path, required=True, help="the checkpoint folder to create")
    ap.add_argument("--cache-dir", help="where random-init and converted base models live (default: cache_dir of "
                    "conf/train.yaml)")
    args = ap.parse_args(argv)

    def body() -> None:
        from rmpeft.deltas.merge import merge_delta
        from rmpeft.deltas.peft_import import open_any

        delta = open_any(args.delta, args.overrides)
        if args.overrides and not getattr(delta, "composed", False):
            raise RmpeftError(f"{args.delta} names its base model itself; overrides apply only to an adapter "
                              "trained elsewhere")
        out = merge_delta(delta, args.out, args.cache_dir)
        print(f"{out}: merged checkpoint (AutoModelForCausalLM.from_pretrained('{out}'))")

    return _run("rmpeft-merge", body)

