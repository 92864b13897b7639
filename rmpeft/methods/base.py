"""The interface every fine-tuning method implements, and the registry that maps names to methods.

A method turns a loaded (frozen or not) causal LM into a trainable one. It is called once per run:

    handle = get_method(cfg.method.name).apply(model, cfg.method, ctx)

and returns a :class:`MethodHandle` that the trainer uses for the optimizer, per-step hooks and the
run record. Each method lives in its own module under ``rmpeft/methods/`` and registers itself with
``@register_method("name")``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from rmpeft.errors import RmpeftError, unknown_choice


@dataclass
class MethodContext:
    """What a method may need besides the model and its own config."""

    seed: int = 0                      # run seed; masks derive their generator from it
    total_params: int = 0              # parameters of the base model (the paper's denominator)
    total_steps: int = 0               # optimizer steps of the run (AdaLoRA's schedule)
    model_cfg: Any = None              # the resolved `model` config group
    tokenizer: Any = None              # for methods initialised from real-token activations (prefix)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


@dataclass
class MethodHandle:
    """A model made trainable by a method.

    ``model`` may be a different object than the one passed to ``apply`` (e.g. a peft wrapper); the
    trainer always uses ``handle.model`` afterwards.
    """

    model: nn.Module
    name: str
    extra: dict[str, Any] = field(default_factory=dict)     # method facts for the record

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimizer updates."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def num_trainable(self) -> int:
        """Trainable entries (what the paper's `params` share counts)."""
        return sum(p.numel() for p in self.trainable_parameters())

    def regularization_loss(self) -> torch.Tensor | None:
        """Extra term the method adds to the training loss (None: nothing)."""
        return None

    def on_optimizer_step(self, step: int) -> None:
        """Called after every optimizer step (before zero_grad), with the 1-based step number."""

    def state_for_record(self) -> dict[str, Any]:
        """Method-specific facts written into the run record under `method_state`."""
        return dict(self.extra)


class Method:
    """Base class of fine-tuning methods. Subclasses implement :meth:`apply`."""

    name: str = ""

    def apply(self, model: nn.Module, cfg: Any, ctx: MethodContext) -> MethodHandle:
        raise NotImplementedError


METHODS: dict[str, Callable[[], Method]] = {}


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: make a method available under ``method.name=<name>``."""

    def deco(cls: type[Method]) -> type[Method]:
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


def get_method(name: str) -> Method:
    """Instantiate the registered method ``name`` (one line error listing the valid ones otherwise)."""
    from rmpeft import methods  # noqa: F401  (imports every method module so they register)

    if name not in METHODS:
        raise unknown_choice("method", name, METHODS)
    return METHODS[name]()


def freeze_all(model: nn.Module) -> None:
    """Set requires_grad=False on every parameter."""
    for p in model.parameters():
        p.requires_grad_(False)


def find_modules(model: nn.Module, suffixes: list[str] | tuple[str, ...], kind: type = nn.Linear
                 ) -> dict[str, nn.Module]:
    """Modules whose qualified name ends with one of ``suffixes`` (``q_proj`` matches ``...self_attn.q_proj``).

    Raises a one-line error naming the suffixes that match nothing and the module names that exist.
    """
    found: dict[str, nn.Module] = {}
    matched: set[str] = set()
    for qname, module in model.named_modules():
        leaf = qname.rsplit(".", 1)[-1]
        for s in suffixes:
            if (leaf == s or qname.endswith("." + s) or qname == s) and isinstance(module, kind):
                found[qname] = module
                matched.add(s)
    missing = [s for s in suffixes if s not in matched]
    if missing:
        existing = sorted({q.rsplit(".", 1)[-1] for q, m in model.named_modules() if isinstance(m, kind) and q})
        from rmpeft.errors import RmpeftError

        raise RmpeftError(
            f"target module(s) {missing} not found in the model; {kind.__name__} modules that exist: "
            + ", ".join(existing)
        )
    return found


def module_names(value: Any, field: str = "target_modules") -> list[str]:
    """A config value (one name or a list of names) as a plain list of module-name suffixes."""
    if isinstance(value, (ListConfig, DictConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, str):
        value = [value]
    if not value or not all(isinstance(v, str) and v for v in value):
        raise RmpeftError(f"method.{field} must be a module name or a list of module names, got {value!r}")
    return list(value)
