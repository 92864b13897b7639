"""SHiRA (Sparse High Rank Adapters; Bhardwaj et al., 2024) through peft, as a baseline.

peft's SHiRA trains ``r * (in + out)`` entries of every target weight, as many as a rank-``r`` LoRA,
at uniformly random positions. peft draws each module's mask from a generator seeded with
``random_seed`` (here the mask seed), anew for every module, so modules of one shape share their
positions: the difference from Random Masking, whose positions are drawn once over all target
matrices, is that, and the per-module count fixed by ``r`` rather than a share of the model.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from rmpeft.errors import RmpeftError
from rmpeft.methods.base import MethodContext, MethodHandle, find_modules, module_names
from rmpeft.methods.peft_delta import PeftMethod
from rmpeft.methods.registry import register_method
from rmpeft.validation import Int, MODULES

MASK_SEED_OFFSET = 1000          # as Random Masking: mask seed = run seed + this, unless method.mask_seed is set


@register_method("shira", label="SHiRA")
class Shira(PeftMethod):
    """peft's SHiRA with its random mask on ``cfg.target_modules``; the base model is frozen."""

    config_fields = {"r": Int(1), "target_modules": MODULES, "mask_seed": Int(0, nullable=True)}

    def apply(self, model: nn.Module, cfg: Any, ctx: MethodContext) -> MethodHandle:
        from peft import ShiraConfig, TaskType, get_peft_model

        targets = module_names(cfg.target_modules)
        found = find_modules(model, targets)
        r = int(cfg.r)
        too_big = [q for q, m in found.items() if r * (m.in_features + m.out_features) > m.weight.numel()]
        if too_big:
            raise RmpeftError(f"method.r={r} gives more SHiRA entries than {too_big[0]} has weights; lower method.r")
        seed = cfg.get("mask_seed")
        seed = int(seed) if seed is not None else int(ctx.seed) + MASK_SEED_OFFSET
        config = ShiraConfig(r=r, mask_type="random", random_seed=seed, target_modules=targets,
                             task_type=TaskType.CAUSAL_LM if hasattr(model, "generate") else None)
        if any(p.is_meta for p in model.parameters()):
            config.mask_fn = lambda base_layer, r, **kwargs: None   # counting only: no mask is drawn
        peft_model = get_peft_model(model, config)
        per_module = {q: r * (m.in_features + m.out_features) for q, m in found.items()}
        extra = {"r": r, "target_modules": targets, "mask_seed": seed, "trainable": sum(per_module.values())}
        return MethodHandle(model=peft_model, name=self.name, extra=extra)
