"""The interface every fine-tuning method implements, and helpers the methods share.

A method turns a loaded (frozen or not) causal LM into a trainable one. It is called once per run:

    handle = get_method(cfg.method.name).apply(model, cfg.method, ctx)

and returns a :class:`MethodHandle` that the trainer uses for the optimizer, per-step hooks and the
run record. What the trainer must know before applying it (e.g. the dtype to load weights in) is a
:class:`Method` attribute. Each method lives in its own module under ``rmpeft/methods/`` and registers
itself with ``@register_method("name", label="Name")`` (:mod:`rmpeft.methods.registry`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from rmpeft.methods.delta_format import Delta, write_tensors
from rmpeft.errors import RmpeftError
from rmpeft.validation import Spec


@dataclass
class MethodContext:
    """What a method may need besides the model and its own config."""

    seed: int = 0                      # run seed; masks derive their generator from it
    total_params: int = 0              # parameters of the base model (the paper's denominator)
    total_steps: int = 0               # optimizer steps of the run (AdaLoRA's schedule)
    model_cfg: Any = None              # the resolved `model` config group
    tokenizer: Any = None              # for methods initialised from real-token activations (prefix)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    cache_dir: str | None = None       # the run's cache_dir (a base model's fingerprint; None: unknown)


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

    def training_state(self) -> dict[str, Any]:
        """What the method changes while training besides its trainable values (e.g. AdaLoRA's
        importance scores), for resuming an interrupted run (rmpeft/resume.py)."""
        return {}

    def load_training_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`training_state`."""

    def state_for_record(self) -> dict[str, Any]:
        """Method-specific facts written into the run record under `method_state`."""
        return dict(self.extra)


class Method:
    """Base class of fine-tuning methods. Subclasses implement :meth:`apply`."""

    name: str = ""
    label: str = ""     # its name in tables and figures (set by ``register_method``)
    # Load the base weights in fp32 whatever `trainer.precision` says (mixed precision then runs under
    # autocast): methods that update the pretrained weights themselves need fp32 master weights.
    keeps_fp32_weights: bool = False
    # The method's own config fields (``method.<field>``), checked before anything runs.
    config_fields: dict[str, Spec] = {}
    # The model families it applies to (``model.family``, :mod:`rmpeft.families`); empty: every family.
    model_families: tuple[str, ...] = ()
    # Right after `apply`, the model computes the same outputs as before (zero-initialised updates).
    output_unchanged_at_init: bool = True
    # The method trains parameters. False (zero-shot evaluation): the run leaves every parameter as it
    # is, takes no optimizer step and only evaluates.
    trains: bool = True

    # The trained update is small enough to keep with every run (``trainer.save_delta=auto``).
    small_delta: bool = True
    # The update can be merged into the base weights as a plain checkpoint (``rmpeft-merge``).
    mergeable: bool = True

    def apply(self, model: nn.Module, cfg: Any, ctx: MethodContext) -> MethodHandle:
        raise NotImplementedError

    def export_delta(self, handle: MethodHandle, folder: Path) -> dict[str, Any]:
        """Write the trained update of ``handle`` (an unwrapped model) into the delta ``folder``; return
        facts for ``delta.json``. Default: every trainable parameter, by name, in ``delta.safetensors``."""
        write_tensors(folder, trainable_by_name(handle.model), self.name)
        return {"layout": "named_parameters"}

    def apply_delta(self, model: nn.Module, delta: Delta, ctx: MethodContext) -> MethodHandle:
        """``model`` with the trained update of ``delta``. Default: :meth:`apply` with the delta's
        method config, then its tensors loaded by parameter name."""
        handle = self.apply(model, OmegaConf.create(delta.method_config), ctx)
        load_by_name(handle.model, delta.tensors(), str(delta.path))
        return handle

    def merged_model(self, handle: MethodHandle) -> nn.Module:
        """A plain model (no rmpeft or peft module) computing what ``handle.model`` computes.
        Default: the model itself (the method changed parameters in place)."""
        if not self.mergeable:
            raise RmpeftError(f"{self.name} deltas cannot be merged into the base weights (the method adds "
                              "computation, not a weight update); evaluate them with rmpeft-eval instead")
        return handle.model


def trainable_by_name(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters of ``model`` by qualified name."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def load_by_name(model: nn.Module, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Replace the trainable parameters of ``model`` by ``tensors`` (same names and shapes; the saved
    dtype is kept, as trained)."""
    params = trainable_by_name(model)
    if set(params) != set(tensors):
        odd = sorted(set(params) ^ set(tensors))
        raise RmpeftError(f"delta {where} does not fit the model: parameter names differ ({', '.join(odd[:3])}"
                          f"{', ...' if len(odd) > 3 else ''})")
    for name, p in params.items():
        if tuple(p.shape) != tuple(tensors[name].shape):
            raise RmpeftError(f"delta {where}: {name} has shape {tuple(tensors[name].shape)}, the model "
                              f"expects {tuple(p.shape)}")
        p.data = tensors[name].to(p.device)


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
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) and v for v in value):
        raise RmpeftError(f"method.{field} must be a module name or a list of module names, got {value!r}")
    return list(value)
