"""Checking a composed run config before anything runs.

Hydra composes the config from YAML and the command line; this module checks its values (types,
ranges, choices) so that a bad value ends in one line naming the field, the bad value and what is
valid, before a finished record is looked up and before any model or data loads.

A field is described by a :class:`Spec`. The common fields are listed in :data:`COMMON_FIELDS`; a
method adds its own through its ``config_fields`` class attribute (see ``rmpeft.methods``), and the
fields whose choices come from a registry (``model.family``, ``task.kind``, ``task.metric``) are given by
the layers that own those registries (``rmpeft.run.registry_fields``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException, UnsupportedInterpolationType

from rmpeft.errors import RmpeftError
from rmpeft.identity import as_dict, get_path
from rmpeft.lr_auto.estimators import ESTIMATORS
from rmpeft.lr_auto.settings import AUTO as AUTO_LR
from rmpeft.optim import OPTIMIZERS, SCHEDULERS

_MISSING = object()


@dataclass(frozen=True)
class Spec:
    """What one field accepts. ``kind``: int, float, bool, str, choice, names, float_pair, any."""

    kind: str
    low: float | None = None          # inclusive lower bound (numbers)
    high: float | None = None         # inclusive upper bound (numbers)
    low_open: bool = False            # lower bound excluded (e.g. lr > 0)
    choices: tuple[str, ...] = ()     # kind="choice"
    nullable: bool = False
    required: bool = True             # a missing field is an error
    words: tuple[str, ...] = ()       # words accepted besides a value of ``kind`` (optim.lr: auto)

    def describe(self) -> str:
        if self.kind == "choice":
            text = "one of " + ", ".join(self.choices)
        else:
            text = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
                    "float_pair": "a list of two numbers", "names": "a module name or a list of module names",
                    "any": "any value"}.get(self.kind, self.kind)
            if self.low is not None or self.high is not None:
                lo = "(" if self.low_open else "["
                text += f" in {lo}{'-inf' if self.low is None else _num(self.low)}, " \
                        f"{'inf' if self.high is None else _num(self.high)}]"
        return text + "".join(f" or {w}" for w in self.words) + (" or null" if self.nullable else "")


def _num(x: float) -> str:
    return f"{x:g}"


def Int(low: float | None = None, high: float | None = None, nullable: bool = False) -> Spec:  # noqa: N802
    return Spec("int", low=low, high=high, nullable=nullable)


def Float(low: float | None = None, high: float | None = None, low_open: bool = False,  # noqa: N802
          nullable: bool = False) -> Spec:
    return Spec("float", low=low, high=high, low_open=low_open, nullable=nullable)


def Choice(*choices: str, nullable: bool = False) -> Spec:  # noqa: N802
    return Spec("choice", choices=tuple(choices), nullable=nullable)


DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")           # trainer.precision (rmpeft.models.resolve_precision)
EPOCH_SELECTIONS = ("val_metric", "val_loss", "last")   # trainer.select_epoch_by
SAVE_DELTA = ("auto", "always", "never")                # trainer.save_delta
NONFINITE_STEPS = ("stop", "skip")                      # trainer.nonfinite_steps
TASK_OBJECTIVES = ("classification", "lm")              # task.objective of tasks with candidates
IMAGE_LAYOUTS = ("auto", "hub", "imagefolder", "cifar10", "mnist", "svhn", "digits")  # task.layout (rmpeft.vision)
TRAIN_AUGMENTS = ("none", "random_resized_crop")        # task.train_augment of image tasks (rmpeft.vision.data)
LOGGERS = ("none", "wandb")                             # logger.name (conf/logger)
WANDB_MODES = ("online", "offline", "disabled")         # logger.mode of the wandb logger

# The largest learning rate: with AdamW every step moves each trained weight by about lr, so any lr above
# about 1 diverges (a diverged run is a result and is recorded, hence room up to 1e6); far beyond it, lr
# times the optimizer's step factors leaves float32's range (3.4e38) and the run crashes instead.
LR_MAX = 1e6

BOOL = Spec("bool")
STR = Spec("str")
MODULES = Spec("names")   # module-name suffixes: one name or a list

# Fields every run has. Method fields come from the method (``Method.config_fields``).
COMMON_FIELDS: dict[str, Spec] = {
    "seed": Int(0),
    "data_seed": Int(0),
    "name": STR,
    "force": BOOL,
    "model.name": STR,
    "model.name_or_path": Spec("str", nullable=True),
    "model.revision": Spec("str", nullable=True, required=False),
    "model.random_init": BOOL,
    "model.first_token_id": Spec("int", low=0, nullable=True, required=False),
    "protocol.name": Spec("choice", choices=("clean", "paper"), required=False),
    "task.name": STR,
    "task.num_train": Int(1, nullable=True),
    "task.num_val": Int(1, nullable=True),
    "task.num_test": Int(1, nullable=True),
    "task.full_train": BOOL,
    "task.test_pool_share": Spec("float", low=0, high=1, low_open=True, nullable=True, required=False),
    "task.objective": Spec("choice", choices=TASK_OBJECTIVES, required=False),
    "task.grad_accum": Spec("int", low=1, required=False),
    "task.data_dir": Spec("str", nullable=True, required=False),
    "task.layout": Spec("choice", choices=IMAGE_LAYOUTS, required=False),
    "task.train_augment": Spec("choice", choices=TRAIN_AUGMENTS, required=False),
    "logger.name": Spec("choice", choices=LOGGERS, required=False),
    "optim.name": Choice(*OPTIMIZERS),
    "optim.lr": Spec("float", low=0, high=LR_MAX, low_open=True, words=(AUTO_LR,)),
    "optim.lr_auto.estimator": Spec("choice", choices=tuple(ESTIMATORS), required=False),
    "optim.lr_auto.batches": Spec("int", low=1, required=False),
    "optim.lr_auto.power_iters": Spec("int", low=1, required=False),
    "optim.lr_auto.constant": Spec("float", low=0, low_open=True, nullable=True, required=False),
    "optim.betas": Spec("float_pair", low=0, high=1),
    "optim.eps": Float(0, low_open=True),
    "optim.weight_decay": Float(0),
    "optim.scheduler": Choice(*SCHEDULERS),
    "optim.warmup_steps": Int(0),
    "optim.max_grad_norm": Float(0, low_open=True, nullable=True),
    "trainer.epochs": Int(1),
    "trainer.batch_size": Int(1),
    "trainer.grad_accum": Int(1),
    "trainer.eval_batch_size": Int(1),
    "trainer.eval_max_tokens": Int(1, nullable=True),
    "trainer.train_max_tokens": Spec("int", low=1, nullable=True, required=False),
    "trainer.gradient_checkpointing": Spec("bool", required=False),
    "trainer.max_length": Int(2),
    "trainer.max_new_tokens": Int(1),
    "trainer.precision": Choice(*PRECISIONS),
    "trainer.device": Choice(*DEVICES),
    "trainer.save_delta": Spec("choice", choices=SAVE_DELTA, required=False),
    "trainer.progress": BOOL,
    "trainer.resume": Spec("bool", required=False),
    "trainer.max_steps": Int(1, nullable=True),
    "trainer.select_epoch_by": Spec("choice", choices=EPOCH_SELECTIONS, required=False),
    "trainer.divergence_loss": Float(0, low_open=True),
    "trainer.nonfinite_steps": Spec("choice", choices=NONFINITE_STEPS, required=False),
    "analysis.hessian": BOOL,
    "analysis.hessian_iters": Int(1),
    "analysis.hessian_tol": Float(0, low_open=True),
    "analysis.hessian_batches": Int(1),
}


def check_value(field: str, value: Any, spec: Spec) -> None:
    """Raise a one-line :class:`RmpeftError` when ``value`` does not fit ``spec``."""
    if value is None:
        if spec.nullable:
            return
        raise _bad(field, value, spec)
    kind = spec.kind
    if kind == "any" or (isinstance(value, str) and value in spec.words):
        return
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "str":
        ok = isinstance(value, str) and value != ""
    elif kind == "choice":
        ok = isinstance(value, str) and value in spec.choices
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool) and _in_range(value, spec)
    elif kind == "float":
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
              and _in_range(value, spec))
    elif kind == "names":
        names = [value] if isinstance(value, str) else value
        ok = isinstance(names, (list, tuple)) and len(names) > 0 and all(isinstance(v, str) and v for v in names)
    elif kind == "float_pair":
        ok = (isinstance(value, (list, tuple)) and len(value) == 2
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) and _in_range(v, spec) for v in value))
    else:  # pragma: no cover - a Spec with an unknown kind is a programming error
        raise ValueError(f"unknown spec kind {kind!r} for {field}")
    if not ok:
        raise _bad(field, value, spec)


def _in_range(value: float, spec: Spec) -> bool:
    if spec.low is not None and (value <= spec.low if spec.low_open else value < spec.low):
        return False
    return spec.high is None or value <= spec.high


def _bad(field: str, value: Any, spec: Spec) -> RmpeftError:
    shown = "null" if value is None else repr(value)
    return RmpeftError(f"{field}={shown} is invalid; expected {spec.describe()}")


def check_fields(cfg: Any, specs: Mapping[str, Spec], prefix: str = "") -> None:
    """Check every field of ``specs`` (dotted paths below ``prefix``) in ``cfg``."""
    for path, spec in specs.items():
        full = f"{prefix}{path}"
        value = get_path(cfg, full, _MISSING) if _has_path(cfg, full) else _MISSING
        if value is _MISSING:
            if spec.required and not spec.nullable:
                raise RmpeftError(f"{full} is missing; expected {spec.describe()}")
            continue
        check_value(full, value, spec)


def _has_path(cfg: Any, dotted: str) -> bool:
    node = cfg
    for part in dotted.split("."):
        if node is None or not hasattr(node, "__contains__") or isinstance(node, str) or part not in node:
            return False
        node = node[part]
    return True


def check_model_path(name_or_path: str | None) -> None:
    """A value that looks like a local path must be an existing folder (a hub id is ``org/name``)."""
    if not name_or_path:
        return
    text = str(name_or_path)
    looks_local = text.startswith(("/", ".", "~")) or text.count("/") > 1 or os.sep != "/" and os.sep in text
    if looks_local and not Path(text).expanduser().is_dir():
        raise RmpeftError(f"model.name_or_path='{text}' is neither an existing folder nor a hub id (org/name)")


def check_data_dir(data_dir: Any) -> None:
    """``task.data_dir``, when set, must be an existing folder (the task reads its files instead of the hub)."""
    if data_dir and not Path(str(data_dir)).expanduser().is_dir():
        raise RmpeftError(f"task.data_dir='{data_dir}' is not an existing folder; expected the folder of the "
                          f"task's official files, or null to load the task from the Hugging Face Hub")


def check_writable_folder(path: Path | str, name: str) -> None:
    """``path`` must be a folder, or a path whose nearest existing parent is a folder this user can write
    (it is created when missing); ``name`` is how the error names it (``results_root='x'``, ``--out x``)."""
    path = Path(str(path)).expanduser()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        what = "is a file" if existing == path else f"lies below the file '{existing}'"
        raise RmpeftError(f"{name} {what}; expected a folder (it is created when missing)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RmpeftError(f"{name}: '{existing}' is not writable; expected a folder this user can write")


def check_writable_file(path: Path | str, name: str) -> None:
    """``path`` must be a file path (not a folder) whose nearest existing parent is a folder this user can
    write; ``name`` is how the error names it (``--out x``)."""
    path = Path(str(path)).expanduser()
    if path.is_dir():
        raise RmpeftError(f"{name} is a folder; expected a file path")
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise RmpeftError(f"{name} lies below the file '{existing}'; expected a file path in a writable folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RmpeftError(f"{name}: '{existing}' is not writable; expected a file path in a folder this user can write")


def check_results_root(root: Any) -> None:
    """``results_root`` must be a folder this user can write, or creatable (run folders go below it)."""
    if root is None or str(root) == "":
        return
    check_writable_folder(root, f"results_root='{root}'")


def resolved(cfg: Any) -> dict[str, Any]:
    """``as_dict(cfg)``; a value that cannot be resolved (an unknown ``${resolver:...}``, a missing
    environment variable or key) is a one-line error naming the field and its text."""
    try:
        return as_dict(cfg)
    except OmegaConfBaseException as e:
        key = str(getattr(e, "full_key", "") or "")
        raw = get_path(OmegaConf.to_container(cfg, resolve=False), key) if key and OmegaConf.is_config(cfg) else None
        first = (str(getattr(e, "msg", "") or e).strip().splitlines() or [type(e).__name__])[0]
        if isinstance(e, UnsupportedInterpolationType):
            from omegaconf.basecontainer import BaseContainer

            known = ", ".join(sorted(getattr(BaseContainer, "_resolvers", {})))
            reason = f"unknown resolver '{first.split('type', 1)[-1].strip()}'; known resolvers: {known}"
        else:
            reason = first
        raise RmpeftError(f"{key or 'config'}={raw!r} cannot be resolved: {reason}") from None


def check_logger(cfg: Any) -> None:
    """The wandb logger's fields (the ``none`` logger has none)."""
    if get_path(cfg, "logger.name", "none") == "wandb":
        check_fields(cfg, {"logger.mode": Spec("choice", choices=WANDB_MODES, required=False),
                           "logger.project": Spec("str", required=False),
                           "logger.init_timeout": Spec("float", low=0, low_open=True, required=False)})


def check_batching(cfg: Any, processes: int | None = None) -> None:
    """The effective batch must split evenly into micro-batches over accumulation steps and processes."""
    world = processes if processes is not None else int(os.environ.get("WORLD_SIZE", "1"))
    batch, accum = int(get_path(cfg, "trainer.batch_size")), int(get_path(cfg, "trainer.grad_accum"))
    if batch % (accum * world):
        raise RmpeftError(f"trainer.batch_size={batch} is not divisible by trainer.grad_accum={accum} "
                          f"x {world} processes")


def validate(cfg: Any, method_fields: Mapping[str, Spec] | None = None,
             extra_checks: Iterable[Callable[[Any], None]] = (), files: bool = True,
             registered: Mapping[str, Spec] | None = None) -> None:
    """Check a composed run config; raises a one-line :class:`RmpeftError` at the first bad value.
    ``registered``: the fields whose choices are a registry's names; ``files=False`` leaves out the
    checks of paths on this machine (model, data, results folders)."""
    cfg = resolved(cfg)
    check_fields(cfg, COMMON_FIELDS)
    check_fields(cfg, registered or {})
    check_fields(cfg, method_fields or {}, prefix="method.")
    if files:
        check_model_path(get_path(cfg, "model.name_or_path"))
        check_data_dir(get_path(cfg, "task.data_dir", None))
        check_results_root(get_path(cfg, "results_root"))
    check_logger(cfg)
    check_batching(cfg)
    for check in extra_checks:
        check(cfg)
