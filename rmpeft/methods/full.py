"""Full fine-tuning: every parameter trainable."""

from __future__ import annotations

from typing import Any

from torch import nn

from rmpeft.methods.base import Method, MethodContext, MethodHandle, register_method


@register_method("ft")
class FullFineTuning(Method):
    def apply(self, model: nn.Module, cfg: Any, ctx: MethodContext) -> MethodHandle:
        for p in model.parameters():
            p.requires_grad_(True)
        return MethodHandle(model=model, name=self.name)
