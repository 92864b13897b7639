"""LoRA (Hu et al., 2021) through peft: low-rank updates ``B A`` on the target projections.

The paper's setting: r=8, alpha=16, no dropout, on ``q_proj`` and ``v_proj`` of every layer.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from rmpeft.methods.base import (
    MethodContext,
    MethodHandle,
    find_modules,
    module_names,
)
from rmpeft.methods.peft_delta import PeftMethod
from rmpeft.methods.registry import register_method
from rmpeft.validation import Float, Int, MODULES


@register_method("lora", label="LoRA")
class LoRA(PeftMethod):
    """peft's LoRA on ``cfg.target_modules``; the base model is frozen."""

    config_fields = {"r": Int(1), "alpha": Float(0, low_open=True), "dropout": Float(0, 1), "target_modules": MODULES}

    def apply(self, model: nn.Module, cfg: Any, ctx: MethodContext) -> MethodHandle:
        from peft import LoraConfig, TaskType, get_peft_model

        targets = module_names(cfg.target_modules)
        find_modules(model, targets)  # one-line error naming the modules that exist
        config = LoraConfig(
            # a model that cannot generate (an image classifier) gets peft's plain wrapper
            task_type=TaskType.CAUSAL_LM if hasattr(model, "generate") else None,
            r=int(cfg.r),
            lora_alpha=float(cfg.alpha),
            lora_dropout=float(cfg.dropout),
            target_modules=targets,
            bias="none",
        )
        peft_model = get_peft_model(model, config)
        extra = {"r": int(cfg.r), "alpha": float(cfg.alpha), "target_modules": targets}
        return MethodHandle(model=peft_model, name=self.name, extra=extra)
