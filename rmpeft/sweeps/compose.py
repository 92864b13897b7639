"""The composed configs of thousands of runs, computed fast and exactly as Hydra would compose them.

Composing one config with Hydra takes 0.1-0.4 s, so composing each run of a 10^4-run sweep would take
most of an hour. Runs of a sweep differ in a few config-group choices (model, task, method) and a few
values (optim.lr, seed, method.ratio). So:

1. the overrides shared by all runs are composed once (the base);
2. each group choice is composed once on top of the base; when it changes nothing outside its own
   package (``model=opt-13b`` only changes ``model.*``), its subtree is reused for every combination;
   choices that do change other parts (an ``experiment=`` that overrides several groups) are composed
   together with Hydra, once per combination;
3. value overrides are applied with Hydra's own override code to a copy per combination.

`check_exact` composes a few runs in full with Hydra and compares, so a config tree that breaks these
assumptions fails loudly instead of silently giving wrong run folders or identities.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from rmpeft.config import compose_run
from rmpeft.errors import RmpeftError
from rmpeft.sweeps.hydra_internals import Override, apply_value_overrides, group_has_options
from rmpeft.sweeps.spec import parse_override

T = TypeVar("T")

# Parts of the composed Hydra node that record how a config was composed, not what it is.
_BOOKKEEPING = ("hydra.runtime", "hydra.overrides", "hydra.job.override_dirname")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _diff_paths(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two plain containers differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in set(a) | set(b):
            p = f"{prefix}.{k}" if prefix else str(k)
            if k not in a or k not in b:
                out.append(p)
            else:
                out += _diff_paths(a[k], b[k], p)
        return out
    return [] if a == b else [prefix]


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + ".")


class RunConfigs:
    """Evaluate a function on the composed config of each run (Hydra must be initialised).

    ``with_hydra=False`` leaves out the (large) ``hydra`` node, which makes each copy several times
    cheaper; use it when the function reads only the task config (e.g. the run folder).
    """

    def __init__(self, config_name: str = "train", with_hydra: bool = True) -> None:
        self.config_name = config_name
        self.with_hydra = with_hydra
        self._composed: dict[tuple[str, ...], DictConfig] = {}
        self._subtrees: dict[tuple[tuple[str, ...], str], tuple[str, DictConfig] | None] = {}
        self._groups: dict[str, bool] = {}

    def _compose(self, overrides: tuple[str, ...]) -> DictConfig:
        if overrides not in self._composed:
            self._composed[overrides] = compose_run(overrides, self.config_name, self.with_hydra)
        return self._composed[overrides]

    def _is_group(self, o: Override) -> bool:
        if o.key_or_group not in self._groups:
            self._groups[o.key_or_group] = group_has_options(o.key_or_group)
        return self._groups[o.key_or_group]

    def _subtree(self, base: tuple[str, ...], choice: str) -> tuple[str, DictConfig] | None:
        """(package path, subtree) when the group choice only changes its own package, else None."""
        key = (base, choice)
        if key not in self._subtrees:
            o = parse_override(choice)
            path = o.key_or_group.replace("/", ".") if o.package is None else None
            with_choice = OmegaConf.to_container(self._compose(base + (choice,)), resolve=False)
            without = OmegaConf.to_container(self._compose(base), resolve=False)
            changed = [p for p in _diff_paths(with_choice, without) if not any(_inside(p, b) for b in _BOOKKEEPING)]
            own = path is not None and not o.is_add() and not o.is_delete() and all(_inside(p, path) for p in changed)
            sub = OmegaConf.select(self._compose(base + (choice,)), path) if own and path else None
            self._subtrees[key] = (path, sub) if isinstance(sub, DictConfig) else None
        return self._subtrees[key]

    def _combination(self, base: tuple[str, ...], choices: tuple[str, ...]) -> DictConfig:
        reusable = {c: self._subtree(base, c) for c in choices}
        composed = tuple(c for c in choices if reusable[c] is None)
        if composed:  # choices composed together may write into another choice's package: take its
            # subtree from a composition that includes them (a few more composes, still exact)
            reusable = {c: self._subtree(base + composed, c) if r else None for c, r in reusable.items()}
            composed = tuple(c for c in choices if reusable[c] is None)
        cfg = copy.deepcopy(self._compose(base + composed))
        with open_dict(cfg):
            for c in choices:
                if reusable[c] is not None:
                    path, sub = reusable[c]
                    OmegaConf.update(cfg, path, copy.deepcopy(sub), merge=False)
        return cfg

    def evaluate(
        self, runs: Sequence[Sequence[str]], fn: Callable[[DictConfig], T], depends_on: tuple[str, ...] | None = None
    ) -> list[T]:
        """``fn(config)`` for every run. ``fn`` must not keep the config: it is reused between runs.

        ``depends_on``: when ``fn`` reads only parts of the config that follow from the group choices and
        from value overrides of keys with these prefixes (e.g. ``("hydra.", "cluster.")`` for launcher
        resources), ``fn`` is evaluated once per distinct such combination instead of once per run.
        """
        if not runs:
            return []
        shared = [o for o in runs[0] if all(o in r for r in runs[1:])]
        base = tuple(shared)
        parsed: dict[str, Override] = {}

        def parse(text: str) -> Override:
            if text not in parsed:
                parsed[text] = parse_override(text)
            return parsed[text]

        # (group choices) -> (value-override keys) -> [(run index, value overrides)]
        plan: dict[tuple[str, ...], dict[tuple[str, ...], list[tuple[int, list[Override]]]]] = {}
        shared_set = set(shared)
        for i, run in enumerate(runs):
            varying = [o for o in run if o not in shared_set]
            choices = tuple(o for o in varying if self._is_group(parse(o)))
            values = [parse(o) for o in varying if o not in choices]
            if depends_on is not None:
                values = [v for v in values if v.key_or_group.startswith(depends_on)]
            signature = tuple(v.get_key_element() for v in values)
            plan.setdefault(choices, {}).setdefault(signature, []).append((i, values))

        results: list[Any] = [None] * len(runs)
        for choices, by_signature in plan.items():
            combination = self._combination(base, choices)  # a fresh object: the first group may change it
            last = len(by_signature) - 1
            for n, (signature, items) in enumerate(by_signature.items()):
                # A copy per signature is enough when every run sets the same keys to plain values (each
                # run overwrites the previous run's); additions, deletions and containers need a fresh copy.
                in_place = not any(k.startswith(("+", "~")) for k in signature) and not any(
                    isinstance(v.value(), (dict, list)) for _, values in items for v in values
                )
                # ``combination`` stays pristine for the next signature; the last one may consume it
                cfg = (combination if n == last else copy.deepcopy(combination)) if in_place else None
                memo: dict[tuple[str, ...], Any] = {}
                for i, values in items:
                    texts = tuple(v.input_line for v in values)
                    if depends_on is not None and texts in memo:
                        results[i] = memo[texts]
                        continue
                    target = cfg if in_place else copy.deepcopy(combination)
                    try:
                        apply_value_overrides(values, target)
                        results[i] = memo[texts] = fn(target)
                    except (HydraException, OmegaConfBaseException) as e:
                        raise RmpeftError(f"cannot compose {' '.join(runs[i])}: {_first_line(e)}") from None
        return results

    def check_exact(self, runs: Sequence[Sequence[str]], fn: Callable[[DictConfig], T], results: Sequence[T]) -> None:
        """Compose the first and last run in full with Hydra and compare ``fn`` with the fast path."""
        for i in sorted({0, len(runs) - 1}) if runs else []:
            exact = fn(self._compose(tuple(runs[i])))
            if exact != results[i]:
                raise RmpeftError(
                    f"config shortcut disagrees with Hydra for {' '.join(runs[i])}: {results[i]} != {exact}; "
                    "rerun with --exact"
                )

    def evaluate_exact(self, runs: Sequence[Sequence[str]], fn: Callable[[DictConfig], T]) -> list[T]:
        """``fn`` on configs composed one by one by Hydra (slow; the reference for the fast path)."""
        return [fn(compose_run(run, self.config_name, self.with_hydra)) for run in runs]

