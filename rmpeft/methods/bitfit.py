"""BitFit (Zaken et al., 2021): train only the bias vectors of the linear layers.

Layer-norm biases stay frozen by default: the paper's printed BitFit share (e.g. 0.066% of OPT-125m) is
exactly the linear-layer biases. ``method.layer_norm_biases=true`` trains them too, as the released
code does.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from rmpeft.errors import RmpeftError
from rmpeft.identity import config_value
from rmpeft.methods.base import (
    Method,
    MethodContext,
    MethodHandle,
    find_modules,
    freeze_all,
    module_names,
)
from rmpeft.methods.registry import register_method
from rmpeft.validation import Spec


@register_method("bitfit", label="BitFit")
class BitFit(Method):
    """Freeze everything except the biases of ``cfg.target_modules`` (null: every ``nn.Linear``)."""

    config_fields = {"target_modules": Spec("names", nullable=True),
                     "layer_norm_biases": Spec("bool", required=False)}

    def apply(self, model: nn.Module, cfg: Any, ctx: MethodContext) -> MethodHandle:
        targets = cfg.get("target_modules")
        if targets is None:
            linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        else:
            linears = find_modules(model, module_names(targets))
        freeze_all(model)
        with_bias = [m for m in linears.values() if m.bias is not None]
        if not with_bias:
            raise RmpeftError(f"bitfit: none of the {len(linears)} target linear layers has a bias "
                              "(e.g. Llama models have none); choose another method.target_modules or method")
        for m in with_bias:
            m.bias.requires_grad_(True)
        norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm) and m.bias is not None] \
            if config_value(cfg, "method.layer_norm_biases", "method") else []
        for m in norms:
            m.bias.requires_grad_(True)
        extra = {"bias_vectors": len(with_bias), "layer_norm_biases": len(norms)}
        return MethodHandle(model=model, name=self.name, extra=extra)
