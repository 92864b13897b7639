"""Full fine-tuning: every parameter trainable."""

from __future__ import annotations

from typing import Any

from torch import nn

from rmpeft.methods.base import Method, MethodContext, MethodHandle
from rmpeft.methods.registry import register_method


@register_method("ft", label="FT")
class FullFineTuning(Method):
    keeps_fp32_weights = True    # the pretrained weights are what trains: fp32 master weights
    small_delta = False          # the delta is the whole model: kept only with trainer.save_delta=always

    def apply(self, model: nn.Module, cfg: Any, ctx: MethodContext) -> MethodHandle:
        for p in model.parameters():
            p.requires_grad_(True)
        return MethodHandle(model=model, name=self.name)
