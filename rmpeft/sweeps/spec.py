"""Sweep files: a YAML file a person reads, which expands into the override lists of concrete runs.

    fixed:                  # overrides every run gets, one value each (Hydra override values)
      name: main
    params:                 # swept for every run, in Hydra's sweeper syntax (as hydra.sweeper.params)
      model: opt-125m,opt-1.3b
      seed: 1,2,3
    grids:                  # optional sub-grids, each crossed with `params`; the runs are their union
      - method: ft
        optim.lr: 1e-5,1e-4
      - method: masking
        method.ratio: 0.001,0.0001
        optim.lr: 1e-3,1e-2,1e-1

One sub-grid is exactly what Hydra's basic sweeper expands for
``rmpeft-train --multirun name=main model=opt-125m,opt-1.3b seed=1,2,3 method=ft optim.lr=1e-5,1e-4``.
Values are override text as written (``1e-5``, ``range(1,4)``, ``choice(a,b)``, ``${...}``); a YAML list
in ``params``/``grids`` is a list of values to sweep. A grid key also present in ``params`` replaces it for
that grid. Hydra's own parser expands the values, so the syntax is Hydra's, not ours.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from hydra.errors import HydraException

from rmpeft.errors import RmpeftError
from rmpeft.sweeps.hydra_internals import Override, new_override_parser

SECTIONS = ("fixed", "params", "grids")

_PARSER: Any = None


def parse_override(text: str, where: str = "") -> Override:
    """One override parsed by Hydra's grammar; a one-line error naming ``where`` when it is invalid."""
    global _PARSER
    if _PARSER is None:
        _PARSER = new_override_parser()
    try:
        return _PARSER.parse_override(text)
    except HydraException as e:
        msg = str(e).strip().splitlines()[0]
        raise RmpeftError(f"{where + ': ' if where else ''}invalid override '{text}': {msg}") from None


def override_key(override: Override) -> str:
    """The key an override sets, without +/~ prefixes: 'optim.lr', 'model', 'hydra/launcher'."""
    key = override.key_or_group
    return f"{key}@{override.package}" if override.package is not None else key


def normalized_values(text: str, where: str = "") -> list[str]:
    """The values an override text stands for, in a form where 1e-2 and 0.01 compare equal."""
    o = parse_override(text, where)
    texts = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
    out = []
    for t in texts:
        v = parse_override(f"{o.get_key_element()}={t}", where).value() if o.is_sweep_override() else o.value()
        out.append(repr(v))
    return out


@dataclass(frozen=True)
class Axis:
    """One swept key and the override strings of its values ('optim.lr=0.01', ...)."""

    key: str
    overrides: tuple[str, ...]

    def values(self) -> list[str]:
        return [o.split("=", 1)[1] for o in self.overrides]


def expand_axis(key: str, value: Any, where: str) -> Axis:
    """Expand one `params`/`grids` entry into its override strings, with Hydra's sweep semantics."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise RmpeftError(f"{where}: '{key}' has no values")
    out: list[str] = []
    for item in items:
        if isinstance(item, (dict, list)):
            raise RmpeftError(f"{where}: '{key}' values must be scalars or Hydra sweep text, got {item!r}")
        o = parse_override(f"{key}={item}", where)
        if o.is_sweep_override():
            if not o.is_discrete_sweep():
                raise RmpeftError(f"{where}: '{key}={item}' is a continuous sweep; only lists, range() and choice() expand")
            out += [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
        else:
            out.append(f"{o.get_key_element()}={item}")
    return Axis(override_key(parse_override(out[0], where)), tuple(dict.fromkeys(out)))


def fixed_override(key: str, value: Any, where: str) -> str:
    """One `fixed` entry as an override string; a YAML list becomes a Hydra list value."""
    if isinstance(value, dict):
        raise RmpeftError(f"{where}: fixed '{key}' must be a single value, got a mapping")
    if isinstance(value, list):
        value = "[" + ",".join(str(v) for v in value) + "]"
    text = key if (key.startswith("~") and value == "") else f"{key}={value}"
    o = parse_override(text, where)
    if o.is_sweep_override():
        raise RmpeftError(f"{where}: fixed '{text}' sweeps several values; put it under `params`")
    return text


@dataclass(frozen=True)
class SweepFile:
    """A parsed sweep file: fixed overrides, common axes, and sub-grids of axes."""

    path: Path
    fixed: tuple[str, ...]
    params: tuple[Axis, ...]
    grids: tuple[tuple[Axis, ...], ...] = field(default=((),))

    @property
    def name(self) -> str:
        return self.path.stem

    def grid_axes(self) -> list[list[Axis]]:
        """The axes of each sub-grid: `params`, with a grid's own axes replacing or extending them."""
        out = []
        for grid in self.grids:
            axes = list(self.params)
            for axis in grid:
                keys = [a.key for a in axes]
                if axis.key in keys:
                    axes[keys.index(axis.key)] = axis
                else:
                    axes.append(axis)
            out.append(axes)
        return out

    def swept_keys(self) -> set[str]:
        return {a.key for axes in self.grid_axes() for a in axes}

    def runs(self) -> list[tuple[str, ...]]:
        """Every run's override list (fixed first, then the swept values), without duplicates, in order."""
        seen: dict[tuple[str, ...], None] = {}
        for axes in self.grid_axes():
            for combo in itertools.product(*(a.overrides for a in axes)):
                seen.setdefault(self.fixed + combo, None)
        return list(seen)

    def multirun_commands(self) -> list[str]:
        """One plain `rmpeft-train --multirun` command per sub-grid (what Hydra alone would run)."""
        cmds = []
        for axes in self.grid_axes():
            parts = list(self.fixed) + [f"{a.key}={','.join(a.values())}" for a in axes]
            cmds.append("rmpeft-train --multirun " + " ".join(_shell_quote(p) for p in parts))
        return cmds

    def with_overrides(self, overrides: list[str]) -> SweepFile:
        """Apply command-line overrides: a swept key restricts the sweep to the given values (sub-grids
        without that key drop out); any other key replaces a fixed override or is added to all runs."""
        sweep = self
        swept = self.swept_keys()
        for text in overrides:
            o = parse_override(text, "command line")
            key = override_key(o)
            if key in swept:
                sweep = sweep._restricted(key, set(normalized_values(text, "command line")), text)
                continue
            fixed = [f for f in sweep.fixed if override_key(parse_override(f)) != key]
            sweep = replace(sweep, fixed=tuple(fixed) + (text,))
        return sweep

    def _restricted(self, key: str, allowed: set[str], text: str) -> SweepFile:
        def keep(axis: Axis) -> Axis:
            if axis.key != key:
                return axis
            return Axis(key, tuple(o for o in axis.overrides if normalized_values(o)[0] in allowed))

        grids = []
        for axes in self.grid_axes():
            if key not in {a.key for a in axes}:
                continue
            axes = [keep(a) for a in axes]
            if all(a.overrides for a in axes):
                grids.append(tuple(axes))
        if not grids:
            values = sorted({v for axes in self.grid_axes() for a in axes if a.key == key for v in a.values()})
            raise RmpeftError(f"'{text}' matches no run of {self.path}; its values of {key}: {', '.join(values)}")
        return replace(self, params=(), grids=tuple(grids))


def _shell_quote(text: str) -> str:
    return f"'{text}'" if any(c in text for c in " $(){}[]*?'\"") else text


def _mapping(doc: dict[str, Any], section: str, path: Path) -> dict[str, Any]:
    value = doc.get(section) or {}
    if not isinstance(value, dict):
        raise RmpeftError(f"{path}: `{section}` must be a mapping of key: value")
    return value


class _SweepLoader(yaml.BaseLoader):
    """PyYAML's BaseLoader (every scalar stays the text written) refusing a key given twice in one mapping,
    which YAML itself resolves silently by keeping the last."""


def _mapping_without_repeats(loader: _SweepLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                problem=f"key '{key}' is given twice in one mapping (YAML would keep only the last)",
                problem_mark=key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node)


_SweepLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_repeats)


def load_sweep(path: Path | str) -> SweepFile:
    """Parse a sweep file (values are kept as the text written, so overrides mean what they say)."""
    path = Path(path)
    if not path.is_file():
        raise RmpeftError(f"sweep file not found: {path}")
    try:
        with open(path) as f:
            doc = yaml.load(f, Loader=_SweepLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}: line {mark.line + 1}" if mark is not None else str(path)
        text = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise RmpeftError(f"{where}: not valid YAML: {text}") from None
    if not isinstance(doc, dict):
        raise RmpeftError(f"{path}: a sweep file is a mapping with sections {', '.join(SECTIONS)}")
    unknown = sorted(set(doc) - set(SECTIONS))
    if unknown:
        raise RmpeftError(f"{path}: unknown section '{unknown[0]}'; valid sections: {', '.join(SECTIONS)}")
    fixed = tuple(fixed_override(k, v, f"{path}: fixed") for k, v in _mapping(doc, "fixed", path).items())
    params = tuple(expand_axis(k, v, f"{path}: params") for k, v in _mapping(doc, "params", path).items())
    raw_grids = doc.get("grids") or [{}]
    if not isinstance(raw_grids, list) or not all(isinstance(g, dict) for g in raw_grids):
        raise RmpeftError(f"{path}: `grids` must be a list of mappings (one per sub-grid)")
    grids = tuple(
        tuple(expand_axis(k, v, f"{path}: grids[{i}]") for k, v in g.items()) for i, g in enumerate(raw_grids)
    )
    sweep = SweepFile(path=path, fixed=fixed, params=params, grids=grids)
    fixed_keys = {override_key(parse_override(f)) for f in fixed}
    both = sorted(fixed_keys & sweep.swept_keys())
    if both:
        raise RmpeftError(f"{path}: '{both[0]}' is both fixed and swept; keep it in one place")
    return sweep
