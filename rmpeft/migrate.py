"""``rmpeft-migrate``: move run folders written before run identities existed to their new names.

    rmpeft-migrate results/runs            # show what would move
    rmpeft-migrate results/runs --apply    # move them

A run folder used to end in ``seed<seed>``; it now ends in ``seed<seed>-<identity hash>``, the hash
computed from the record's stored config (see ``rmpeft/identity.py``). Each record is moved with the
files beside it and its ``run_dir``/``identity_hash`` fields are updated. Nothing is overwritten: a
record whose new folder already exists is left where it is and reported.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from rmpeft import records
from rmpeft.errors import RmpeftError


def plan(root: Path) -> list[tuple[Path, Path]]:
    """(old folder, new folder) for every legacy run folder below ``root``."""
    moves = []
    for path, data in records.find_records(root):
        rec = records.RunRecord.from_dict(data)
        folder = path.parent
        if not rec.config or folder.name != f"seed{rec.get('seed', 0)}":
            continue
        moves.append((folder, folder.with_name(f"{folder.name}-{rec.identity_hash}")))
    return moves


def migrate(root: Path, apply: bool = False, say=print) -> int:
    """Move legacy run folders; returns how many were (or would be) moved."""
    moved = 0
    for old, new in plan(root):
        if new.exists():
            say(f"skip {old}: {new} already exists")
            continue
        say(f"{'move' if apply else 'would move'} {old} -> {new.name}")
        if apply:
            rec = records.load_record(old)
            assert rec is not None
            shutil.move(str(old), str(new))
            rec.run_dir = str(new)
            records.write_record(new, rec)
        moved += 1
    return moved


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rmpeft-migrate", description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path, help="a results folder (e.g. results/runs)")
    p.add_argument("--apply", action="store_true", help="move the folders (default: only show the plan)")
    args = p.parse_args(argv)
    if not args.root.is_dir():
        print(f"rmpeft-migrate: error: results folder '{args.root}' does not exist", file=sys.stderr)
        return 2
    try:
        n = migrate(args.root, args.apply)
    except RmpeftError as e:
        print(f"rmpeft-migrate: error: {e}", file=sys.stderr)
        return 1
    print(f"{n} run folder(s) {'moved' if args.apply else 'to move (rerun with --apply)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
