"""Where the Hydra configs live, and the one-line check of config-group choices that every command
runs before Hydra composes (Hydra's own message for an unknown choice spans many lines)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from rmpeft.errors import RmpeftError, unknown_choice

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = REPO / "conf"
# Config groups of `train.yaml` whose command-line choices are checked.
CHECKED_GROUPS = ("model", "task", "method", "optim", "logger", "cluster", "experiment")


def group_choices(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    """Names of the configs in a config group folder."""
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def check_choices(args: Iterable[str], groups: Iterable[str] = CHECKED_GROUPS, conf_dir: Path = CONF_DIR) -> None:
    """Raise a one-line error for a ``group=value`` override that names no config of that group.

    Comma-separated values (multirun lists) are checked one by one; ``null`` deselects a group.
    """
    groups = set(groups)
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        if key not in groups or value in ("null", ""):
            continue
        choices = group_choices(key, conf_dir)
        for v in value.split(","):
            if v not in choices:
                raise unknown_choice(key, v, choices)


def run_hydra_command(prog: str, hydra_main: Callable[[], object], groups: Iterable[str] = CHECKED_GROUPS) -> None:
    """Entry point of a Hydra command: a bad group choice exits 2 with one line on stderr, before
    Hydra composes; otherwise the Hydra app runs."""
    try:
        check_choices(sys.argv[1:], groups)
    except RmpeftError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
    hydra_main()
