"""Deltas of the peft methods (LoRA, AdaLoRA, prefix, SHiRA): peft's own adapter files.

``save_pretrained`` of the peft model writes ``adapter_config.json`` and ``adapter_model.safetensors``
into the delta folder, so ``PeftModel.from_pretrained(base_model, <delta>)`` loads it without rmpeft.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from rmpeft.methods.delta_format import Delta
from rmpeft.methods.base import Method, MethodContext, MethodHandle


def export_peft(model: nn.Module, folder: Path) -> dict[str, Any]:
    """Write the peft adapter of ``model`` (a ``PeftModel``) into ``folder``."""
    model.save_pretrained(str(folder))
    return {"layout": "peft_adapter"}


def load_peft(model: nn.Module, delta: Delta) -> nn.Module:
    """``model`` wrapped by peft with the delta's adapter (trainable, as during training)."""
    from peft import PeftConfig, PeftModel

    # peft refuses to load a prompt-learning adapter as trainable; its table is made trainable after.
    prompt = PeftConfig.from_pretrained(str(delta.path)).is_prompt_learning
    peft_model = PeftModel.from_pretrained(model, str(delta.path), is_trainable=not prompt)
    if prompt:
        for p in peft_model.prompt_encoder.parameters():
            p.requires_grad_(True)
    return peft_model


def merge_peft(model: nn.Module) -> nn.Module:
    """The base model with the adapter's low-rank update merged into its weights (peft's merge)."""
    return model.merge_and_unload()


class PeftMethod(Method):
    """A method whose trained state is a peft adapter: its delta is the adapter folder, loaded and
    merged by peft."""

    def export_delta(self, handle: MethodHandle, folder: Path) -> dict[str, Any]:
        return export_peft(handle.model, folder)

    def apply_delta(self, model: nn.Module, delta: Delta, ctx: MethodContext) -> MethodHandle:
        return MethodHandle(model=load_peft(model, delta), name=self.name,
                            extra=dict(delta.meta.get("method_state") or {}))

    def merged_model(self, handle: MethodHandle) -> nn.Module:
        return merge_peft(handle.model)
