"""Where the Hydra configs live, the one-line check of config-group choices that every command runs
before Hydra composes (Hydra's own message for an unknown choice spans many lines), and the one helper
that composes a run's config outside ``@hydra.main`` (parameter counts, sweeps, tests)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from rmpeft.errors import RmpeftError, unknown_choice

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = REPO / "conf"
# Config groups of `train.yaml` whose command-line choices are checked.
CHECKED_GROUPS = ("model", "task", "method", "optim", "logger", "cluster", "resources", "protocol", "experiment")


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


@contextmanager
def hydra_initialized(job_name: str = "rmpeft") -> Iterator[None]:
    """Hydra initialised on the repository's ``conf/`` for the duration of the block."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR), job_name=job_name):
        yield


def compose_run(overrides: Sequence[str], config_name: str = "train", with_hydra: bool = False) -> DictConfig:
    """One run's config as ``rmpeft-train`` composes it for these overrides, with the ``hydra`` node when
    ``with_hydra``. Hydra must be initialised (``hydra_initialized``); a config that cannot be composed
    is a one-line error."""
    try:
        return compose(config_name, overrides=list(overrides), return_hydra_config=with_hydra)
    except (HydraException, OmegaConfBaseException) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RmpeftError(f"cannot compose {' '.join(overrides)}: {first}") from None


def compose_config(overrides: Sequence[str], config_name: str = "train", with_hydra: bool = False) -> DictConfig:
    """``compose_run`` with Hydra initialised just for this call."""
    with hydra_initialized():
        return compose_run(overrides, config_name, with_hydra)
