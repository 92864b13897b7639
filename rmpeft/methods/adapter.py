"""Houlsby adapters (Houlsby et al., 2019): bottleneck MLPs inserted after sublayer output projections.

Each adapter maps the projection's output ``h`` to ``h + up(relu(down(h)))`` before the residual
addition. ``up`` starts at zero, so the model is unchanged at initialisation; ``down``'s bias starts at
zero too (``down_bias_init: zero``) or keeps ``nn.Linear``'s default init (``default``: the released
code, ``PEFT/adapter.py`` lines 129-150, which zeroes only the up projection; ``protocol=paper``). The
paper places two per layer: after the attention output projection and after the second FFN projection.

Written here because no maintained library fits: AdapterHub pins an old transformers and peft has
no Houlsby adapters. It is model-agnostic: the adapter attaches to any ``nn.Linear`` by name (a
child module ``adapter`` plus a forward hook), so OPT (``out_proj``/``fc2``) and Llama
(``o_proj``/``down_proj``) work alike and the base weights keep their names.

Size: each adapter has ``2 * d * r + r + d`` parameters (both projections with bias; layer norms stay
frozen), as in the released code. For OPT this is 4.9-5.5% below the paper's printed Adapter share
(e.g. 0.2503% vs 0.265% on OPT-125m; ``rmpeft-params --table`` flags it); neither the paper nor the
released code accounts for the difference, so we keep the plain Houlsby bottleneck.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rmpeft.errors import unknown_choice
from rmpeft.methods.base import (
    Method,
    MethodContext,
    MethodHandle,
    find_modules,
    freeze_all,
    module_names,
)
from rmpeft.methods.registry import register_method
from rmpeft.validation import Choice, Int, MODULES, Spec

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}
DOWN_BIAS_INITS = ("zero", "default")   # method.down_bias_init: zeros | nn.Linear's init (the released code)


class BottleneckAdapter(nn.Module):
    """``up(act(down(h)))``: the residual branch of a Houlsby adapter (``up`` zero-initialised; ``down``'s
    bias zero or, with ``down_bias_init="default"``, ``nn.Linear``'s uniform init)."""

    def __init__(self, dim: int, bottleneck: int, activation: str = "relu",
                 device: torch.device | None = None, dtype: torch.dtype | None = None,
                 down_bias_init: str = "zero") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise unknown_choice("adapter activation", activation, ACTIVATIONS)
        if down_bias_init not in DOWN_BIAS_INITS:
            raise unknown_choice("method.down_bias_init", down_bias_init, DOWN_BIAS_INITS)
        self.down = nn.Linear(dim, bottleneck, device=device, dtype=dtype)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, dim, device=device, dtype=dtype)
        if not self.up.weight.is_meta:
            if down_bias_init == "zero":
                nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(h)))


def _apply_adapter(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
    """Forward hook on the adapted projection: add the adapter branch (computed in its own dtype)."""
    adapter = module.adapter
    dtype = adapter.up.weight.dtype
    return output + adapter(output.to(dtype)).to(output.dtype)


def add_adapters(model: nn.Module, targets: list[str], bottleneck: int, activation: str,
                 down_bias_init: str = "zero") -> dict[str, BottleneckAdapter]:
    """Attach an adapter after every ``nn.Linear`` whose name ends with one of ``targets``."""
    added: dict[str, BottleneckAdapter] = {}
    for name, linear in find_modules(model, targets).items():
        weight = linear.weight
        # Adapters stay in fp32 when the frozen model is in half precision (like peft's adapter weights).
        dtype = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
        adapter = BottleneckAdapter(linear.out_features, bottleneck, activation, device=weight.device, dtype=dtype,
                                    down_bias_init=down_bias_init)
        linear.add_module("adapter", adapter)
        linear.register_forward_hook(_apply_adapter)
        added[name] = adapter
    return added


@register_method("adapter", label="Adapter")
class HoulsbyAdapter(Method):
    """Freeze the model and train bottleneck adapters after ``cfg.target_modules``."""

    config_fields = {"bottleneck": Int(1), "activation": Choice(*ACTIVATIONS), "target_modules": MODULES,
                     "down_bias_init": Spec("choice", choices=DOWN_BIAS_INITS, required=False)}
    mergeable = False    # the adapter adds a nonlinear branch, not a weight update

    def apply(self, model: nn.Module, cfg: Any, ctx: MethodContext) -> MethodHandle:
        targets = module_names(cfg.target_modules)
        freeze_all(model)
        down_bias_init = str(cfg.get("down_bias_init") or "zero")   # configs from before the field: zero
        added = add_adapters(model, targets, int(cfg.bottleneck), str(cfg.activation), down_bias_init)
        extra = {"bottleneck": int(cfg.bottleneck), "target_modules": targets, "adapters": len(added)}
        return MethodHandle(model=model, name=self.name, extra=extra)
