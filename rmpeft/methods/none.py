"""Zero-shot evaluation: the pretrained model as it is, nothing trained.

The run evaluates the untouched model on the validation and test splits and writes a normal record
(``trainable_params`` 0, no epochs, ``method_state.zero_shot`` true). ``optim.*`` has no effect.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from rmpeft.methods.base import Method, MethodContext, MethodHandle, freeze_all
from rmpeft.methods.registry import register_method


@register_method("none", label="Zero-shot")
class ZeroShot(Method):
    """Freeze every parameter; the trainer skips training for methods with ``trains = False``."""

    trains = False
    mergeable = False     # nothing to merge: the base checkpoint is the model

    def apply(self, model: nn.Module, cfg: Any, ctx: MethodContext) -> MethodHandle:
        freeze_all(model)
        return MethodHandle(model=model, name=self.name, extra={"zero_shot": True})
