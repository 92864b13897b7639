"""``rmpeft-identity``: which run a config is, before (or after) running it.

    rmpeft-identity experiment=smoke method=lora method.r=16
    rmpeft-identity model=opt-125m task=rte method=masking method.ratio=1e-4 optim.lr=1e-2 --json

Prints the run folder, the identity hash, the record's status there, and the identity itself (every
result-changing field; see ``rmpeft/identity.py``), with ``auto`` fields and local data resolved as on
this machine (``rmpeft/resolve.py``). Checks the config as ``rmpeft-train`` does.
"""

from __future__ import annotations

import argparse
import json
import sys

from rmpeft import records
from rmpeft.config import check_choices, check_new_fields, compose_config
from rmpeft.errors import RmpeftError
from rmpeft.resolve import resolve_run_config
from rmpeft.run import check_config


def describe(overrides: list[str]) -> dict:
    """Folder, hash, status and identity of the run these overrides describe."""
    check_choices(overrides)
    try:
        cfg = compose_config(overrides)
    except RmpeftError:
        check_new_fields(overrides, plain=True)   # an unknown field: say which, not Hydra's several lines
        raise
    check_config(cfg)
    resolve_run_config(cfg)
    return {"run_dir": str(records.run_dir(cfg)), "identity_hash": records.identity_hash(cfg),
            "setting_hash": records.setting_hash(cfg), "status": records.run_status(cfg),
            "identity": records.run_identity(cfg)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rmpeft-identity", description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="Hydra overrides, as for rmpeft-train")
    p.add_argument("--json", action="store_true", help="print everything as one JSON object")
    args = p.parse_args(argv)
    try:
        info = describe(args.overrides)
    except RmpeftError as e:
        print(f"rmpeft-identity: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"run folder:    {info['run_dir']}")
    print(f"identity hash: {info['identity_hash']}   (table-cell setting: {info['setting_hash']})")
    print(f"status:        {info['status']}")
    print("identity:")
    print(json.dumps(info["identity"], indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
