"""Where the Hydra configs live, the one-line check of config-group choices that every command runs
before Hydra composes (Hydra's own message for an unknown choice spans many lines), and the one helper
that composes a run's config outside ``@hydra.main`` (parameter counts, sweeps, tests)."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rmpeft.errors import USAGE_EXIT, RmpeftError, unknown_choice

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = REPO / "conf"
# Config groups of `train.yaml` whose command-line choices are checked.
CHECKED_GROUPS = ("model", "task", "method", "optim", "logger", "cluster", "resources", "protocol", "experiment")
# Config nodes that take fields the yaml files do not declare (``+model.arch.dropout=0.0``: a Hugging Face
# config field; a site's rows of the resources tables; Hydra's own settings). Anywhere else, ``+key=value``
# is refused: it adds a field that nothing reads (a typo such as ``+trainer.epoch=3``) and yet changes the
# run's identity.
OPEN_NODES = ("model.arch", "resources", "hydra")


def group_choices(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    """Names of the configs in a config group folder."""
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def check_choices(args: Iterable[str], groups: Iterable[str] = CHECKED_GROUPS, conf_dir: Path = CONF_DIR,
                  config_name: str = "train") -> None:
    """Raise a one-line error for a ``group=value`` override that names no config of that group, and for
    a ``+key=value`` / ``++key=value`` that adds a field the config does not have (:func:`check_new_fields`).

    Comma-separated values (multirun lists) are checked one by one; ``null`` deselects a group.
    """
    args = list(args)
    groups = set(groups)
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        raw, value = arg.split("=", 1)
        key = raw.lstrip("+~")
        if key not in groups or value == "null" or (value == "" and raw.startswith("~")):
            continue
        choices = group_choices(key, conf_dir)
        for v in value.split(","):
            if v not in choices:
                raise unknown_choice(key, v, choices)
    check_new_fields(args, conf_dir, config_name)


def is_open(key: str) -> bool:
    """Whether a field may be added at ``key`` (it lies under one of :data:`OPEN_NODES`)."""
    return any(key == node or key.startswith(node + ".") for node in OPEN_NODES)


def value_overrides(args: Iterable[str], conf_dir: Path = CONF_DIR) -> Iterator[tuple[str, str, str]]:
    """``(prefix, key, arg)`` of the overrides that set a field (not a group choice, not a flag):
    prefix ``""``, ``"+"``, ``"++"`` or ``"~"``."""
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        raw = arg.split("=", 1)[0]
        key = raw.lstrip("+~")
        prefix = raw[: len(raw) - len(key)]
        if not key or "/" in key or "@" in key or (conf_dir / key).is_dir():
            continue   # a config group (``+experiment=smoke``, ``hydra/launcher=...``)
        yield prefix, key, arg


def field_paths(cfg: Any, prefix: str = "") -> set[str]:
    """Every dotted path of a config (its nodes and leaves), without resolving it."""
    tree = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else cfg
    out: set[str] = set()
    if isinstance(tree, dict):
        for k, v in tree.items():
            path = f"{prefix}{k}"
            out.add(path)
            out |= field_paths(v, path + ".")
    return out


def default_fields(args: Iterable[str], conf_dir: Path = CONF_DIR, config_name: str = "train") -> set[str] | None:
    """The field paths of the config composed from the group choices among ``args`` (the first value of a
    comma list) and no value overrides; None when it cannot be composed (Hydra then reports why)."""
    args = list(args)
    values = {a for _, _, a in value_overrides(args, conf_dir)}
    groups = [a.split(",", 1)[0] for a in args if not a.startswith(("-", "~")) and "=" in a and a not in values]
    try:
        try:
            return field_paths(compose_run(groups, config_name))
        except AssertionError:   # Hydra is not initialised here (its check is an assert): initialise it now
            return field_paths(compose_config(groups, config_name))
    except (RmpeftError, HydraException, OmegaConfBaseException, ValueError):
        return None


def unknown_field(key: str, arg: str, known: Iterable[str] | None) -> RmpeftError:
    """The one-line error for an override of a field the config does not have."""
    close = difflib.get_close_matches(key, sorted(known or ()), n=1, cutoff=0.75)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return RmpeftError(f"unknown field '{key}' in '{arg}'{hint}; only fields under "
                       f"{', '.join(OPEN_NODES)} can be added with '+'")


def check_new_fields(args: Iterable[str], conf_dir: Path = CONF_DIR, config_name: str = "train",
                     plain: bool = False) -> None:
    """Refuse an override that adds a field outside :data:`OPEN_NODES`: ``+key=value`` (Hydra refuses
    ``+`` on a field that exists), ``++key=value`` on a field the composed defaults lack, and with
    ``plain`` also ``key=value`` on such a field (Hydra's own message for it spans several lines)."""
    args = list(args)
    suspects = [(p, k, a) for p, k, a in value_overrides(args, conf_dir)
                if not is_open(k) and (p in ("+", "++") or (plain and p == ""))]
    if not suspects:
        return
    known = default_fields(args, conf_dir, config_name)
    for prefix, key, arg in suspects:
        if known is None:
            if prefix == "+":
                raise unknown_field(key, arg, None)
        elif key not in known:
            raise unknown_field(key, arg, known)


def run_hydra_command(prog: str, hydra_main: Callable[[], object], groups: Iterable[str] = CHECKED_GROUPS,
                      config_name: str = "train", check_args: Callable[[list[str]], None] | None = None) -> None:
    """Entry point of a Hydra command: a bad group choice, an unknown field or a config that cannot be
    composed exits with status 2 and one line on stderr, before Hydra runs; otherwise the Hydra app runs.
    (A single run is composed here once; ``check_args`` may check what Hydra flags such as ``--multirun``
    would run; other flags are left to Hydra.)"""
    args = sys.argv[1:]
    try:
        check_choices(args, groups, config_name=config_name)
        if check_args is not None:
            check_args(args)
        if not any(a.startswith("-") for a in args):
            try:
                compose_config(args, config_name)
            except RmpeftError:
                check_new_fields(args, config_name=config_name, plain=True)
                raise
    except RmpeftError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(USAGE_EXIT)
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
