"""``rmpeft-migrate``: move run folders whose name does not match their config's identity.

    rmpeft-migrate results/runs            # show what would move
    rmpeft-migrate results/runs --apply    # move them

A run folder ends in ``seed<seed>-<identity hash>``, the hash computed from the record's stored
config (see ``rmpeft/identity.py``). Folders written before identities existed end in ``seed<seed>``;
folders written by an older version whose identity rules differed end in another hash. Records from
before ``auto`` fields were resolved are taken to have run on ``--auto-device`` (default cpu) and local
data gets its content fingerprint when its folder is readable here (``rmpeft/resolve.py``). Each such
record is moved with the files beside it to the folder a relaunch looks in, and its ``run_dir`` /
``identity_hash`` fields are updated. Nothing is overwritten: a record whose new folder already exists
is left where it is and reported.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from rmpeft import records
from rmpeft.errors import USAGE_EXIT, RmpeftError
from rmpeft.resolve import resolve_recorded_config


def plan(root: Path, device: str = "cpu", precision: str | None = None, say=print) -> list[tuple[Path, Path, dict]]:
    """(old folder, new folder, resolved config) for every run folder below ``root`` not named by its
    identity; ``device`` / ``precision``: what a record's ``auto`` fields ran as."""
    moves = []
    for path, data in records.find_records(root):
        if not data.get("config"):
            continue
        if not isinstance(data["config"], dict) or not all(
                isinstance(data["config"].get(k) or {}, dict) for k in ("trainer", "task")):
            say(f"skip {path.parent}: its record's config is not a mapping")
            continue
        folder = path.parent
        seed = f"seed{records.get_path(data['config'], 'seed', 0)}"
        if folder.name != seed and not folder.name.startswith(f"{seed}-"):
            continue   # not a run folder laid out by rmpeft
        config = resolve_recorded_config(data["config"], device, precision)
        target = folder.with_name(f"{seed}-{records.identity_hash(config)}")
        if target != folder:
            moves.append((folder, target, config))
    return moves


def migrate(root: Path, apply: bool = False, say=print, device: str = "cpu", precision: str | None = None) -> int:
    """Move legacy run folders; returns how many were (or would be) moved."""
    moved = 0
    for old, new, config in plan(root, device, precision, say):
        if new.exists():
            say(f"skip {old}: {new} already exists")
            continue
        say(f"{'move' if apply else 'would move'} {old} -> {new.name}")
        if apply:
            rec = records.load_record(old)
            assert rec is not None
            shutil.move(str(old), str(new))
            rec.config = config
            rec.run_dir, rec.identity_hash = str(new), records.identity_hash(config)
            records.write_record(new, rec)
        moved += 1
    return moved


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rmpeft-migrate", description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path, help="a results folder (e.g. results/runs)")
    p.add_argument("--apply", action="store_true", help="move the folders (default: only show the plan)")
    p.add_argument("--auto-device", choices=("cpu", "cuda"), default="cpu",
                   help="the device that records with trainer.device=auto ran on (default: cpu)")
    p.add_argument("--auto-precision", choices=("fp32", "bf16", "fp16"), default=None,
                   help="the precision that records with trainer.precision=auto ran in (default: fp32 on cpu, bf16 on cuda)")
    args = p.parse_args(argv)
    if not args.root.is_dir():
        what = "is a file; expected a folder" if args.root.exists() else "does not exist"
        print(f"rmpeft-migrate: error: results folder '{args.root}' {what}", file=sys.stderr)
        return USAGE_EXIT
    try:
        n = migrate(args.root, args.apply, device=args.auto_device, precision=args.auto_precision)
    except RmpeftError as e:
        print(f"rmpeft-migrate: error: {e}", file=sys.stderr)
        return USAGE_EXIT
    print(f"{n} run folder(s) {'moved' if args.apply else 'to move (rerun with --apply)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
