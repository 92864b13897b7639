"""AdaLoRA (Zhang et al., 2023) through peft, with its rank reallocation switched on.

Every target projection starts with an SVD-shaped update ``P diag(E) Q`` of rank ``init_r``. After
each optimizer step :meth:`AdaLoRAHandle.on_optimizer_step` calls peft's ``update_and_allocate``,
which scores every singular value by sensitivity and prunes the least important ones until the
average rank reaches ``target_r`` (cubic budget schedule between ``tinit`` and ``total_step - tfinal``).
The schedule is set from the run's real number of optimizer steps (``MethodContext.total_steps``).
``method.reallocate=false`` never reallocates (every module keeps rank ``init_r``): AdaLoRA as the
released code ran it, together with ``orth_reg_weight=0`` (no penalty: it returns None at weight 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rmpeft.methods.delta_format import Delta
from rmpeft.errors import RmpeftError
from rmpeft.identity import config_value
from rmpeft.methods.base import (
    MethodContext,
    MethodHandle,
    find_modules,
    module_names,
)
from rmpeft.methods.peft_delta import PeftMethod, load_peft
from rmpeft.methods.registry import register_method
from rmpeft.validation import Float, Int, MODULES, Spec


def adalora_schedule(total_steps: int, tinit_fraction: float, tfinal_fraction: float) -> tuple[int, int]:
    """(tinit, tfinal) in optimizer steps; raises if no step is left for the budgeting phase."""
    tinit = int(round(float(tinit_fraction) * total_steps))
    tfinal = int(round(float(tfinal_fraction) * total_steps))
    if tinit < 0 or tfinal < 0 or tinit >= total_steps - tfinal:
        raise RmpeftError(
            f"adalora schedule leaves no rank-allocation phase: tinit={tinit}, tfinal={tfinal} of "
            f"{total_steps} optimizer steps; lower method.tinit_fraction/method.tfinal_fraction or train longer"
        )
    return tinit, tfinal


@dataclass
class AdaLoRAHandle(MethodHandle):
    """Reallocates ranks after every optimizer step and records the current rank of each module."""

    # peft's AdaLoraModel, kept apart from `model` because the trainer may wrap `model` (e.g. in DDP).
    tuner: Any = field(default=None, repr=False)

    reallocate: bool = True   # false: ranks stay at init_r (method.reallocate)

    def on_optimizer_step(self, step: int) -> None:
        # Needs the gradients of this step: the trainer calls it after optimizer.step(), before zero_grad().
        if self.reallocate:
            self.tuner.update_and_allocate(step)

    def training_state(self) -> dict[str, Any]:
        """The rank allocator's importance averages and the rank pattern reached so far."""
        allocator = self.tuner.rankallocator
        cfg = self.tuner.peft_config[self.tuner.trainable_adapter_name]
        return {"ipt": dict(allocator.ipt), "exp_avg_ipt": dict(allocator.exp_avg_ipt),
                "exp_avg_unc": dict(allocator.exp_avg_unc), "rank_pattern": cfg.rank_pattern}

    def load_training_state(self, state: dict[str, Any]) -> None:
        if not state:
            return
        allocator = self.tuner.rankallocator
        for key in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
            setattr(allocator, key, dict(state[key]))
        self.tuner.peft_config[self.tuner.trainable_adapter_name].rank_pattern = state["rank_pattern"]

    def ranks(self) -> dict[str, int]:
        """Current rank (unpruned singular values) of every adapted module, by module name."""
        cfg = self.tuner.peft_config[self.tuner.trainable_adapter_name]
        pattern = cfg.rank_pattern or {}
        ranks: dict[str, int] = {}
        for name, _ in self.tuner.model.named_parameters():
            if ".lora_E" not in name:
                continue
            module = name.split(".lora_E", 1)[0]
            key = next((k for k in (name, name.replace(f".{self.tuner.trainable_adapter_name}", ""))
                        if k in pattern), None)
            ranks[module] = int(sum(bool(b) for b in pattern[key])) if key else int(cfg.init_r)
        return ranks

    def regularization_loss(self) -> torch.Tensor | None:
        """AdaLoRA's orthogonality penalty on P and Q, times ``orth_reg_weight``.

        peft adds it inside ``forward`` only when the model computes the loss itself (``labels=``);
        a loop that computes its loss from the logits adds this term to stay faithful to AdaLoRA.
        """
        cfg = self.tuner.peft_config[self.tuner.trainable_adapter_name]
        if not float(cfg.orth_reg_weight):
            return None
        terms = []
        for name, p in self.tuner.model.named_parameters():
            if ("lora_A" in name or "lora_B" in name) and self.tuner.trainable_adapter_name in name:
                cov = p @ p.T if "lora_A" in name else p.T @ p
                eye = torch.eye(*cov.shape, device=cov.device, dtype=cov.dtype)
                terms.append(torch.linalg.matrix_norm(cov - eye))
        if not terms:
            return torch.zeros(())
        return float(cfg.orth_reg_weight) * torch.stack(terms).mean()

    def state_for_record(self) -> dict[str, Any]:
        ranks = self.ranks()
        return {**self.extra, "ranks": ranks, "rank_total": sum(ranks.values())}


@register_method("adalora", label="AdaLoRA")
class AdaLoRA(PeftMethod):
    """peft's AdaLoRA on ``cfg.target_modules`` with the budget schedule derived from the run length."""

    model_families = ("causal_lm",)     # peft's AdaLoRA model is a causal-LM task model
    config_fields = {"init_r": Int(1), "target_r": Int(1), "alpha": Float(0, low_open=True), "dropout": Float(0, 1),
                     "tinit_fraction": Float(0, 1), "tfinal_fraction": Float(0, 1), "deltaT": Int(1),
                     "beta1": Float(0, 1), "beta2": Float(0, 1), "orth_reg_weight": Float(0), "target_modules": MODULES,
                     "reallocate": Spec("bool", required=False)}

    def apply(self, model: nn.Module, cfg: Any, ctx: MethodContext) -> MethodHandle:
        from peft import AdaLoraConfig, TaskType, get_peft_model

        targets = module_names(cfg.target_modules)
        find_modules(model, targets)
        init_r, target_r = int(cfg.init_r), int(cfg.target_r)
        if not 0 < target_r < init_r:
            raise RmpeftError(f"adalora needs 0 < method.target_r < method.init_r, got target_r={target_r}, "
                              f"init_r={init_r}")
        total = int(ctx.total_steps)
        on_meta = any(p.is_meta for p in model.parameters())
        if total <= 0:
            if not on_meta:
                raise RmpeftError("adalora needs the run's number of optimizer steps (MethodContext.total_steps > 0)")
            total = 1  # counting parameters on the meta device: the schedule is never used
            tinit, tfinal = 0, 0
        else:
            tinit, tfinal = adalora_schedule(total, cfg.tinit_fraction, cfg.tfinal_fraction)
        config = AdaLoraConfig(
            task_type=TaskType.CAUSAL_LM,
            init_r=init_r,
            target_r=target_r,
            lora_alpha=float(cfg.alpha),
            lora_dropout=float(cfg.dropout),
            target_modules=targets,
            total_step=total,
            tinit=tinit,
            tfinal=tfinal,
            deltaT=int(cfg.deltaT),
            beta1=float(cfg.beta1),
            beta2=float(cfg.beta2),
            orth_reg_weight=float(cfg.orth_reg_weight),
        )
        peft_model = get_peft_model(model, config)
        # `ranknum` is a constant (peft creates it with requires_grad=False) but peft's move of the
        # adapter onto a meta-device base layer turns it trainable; keep it frozen everywhere.
        for name, p in peft_model.named_parameters():
            if ".ranknum." in name:
                p.requires_grad_(False)
        reallocate = bool(config_value(cfg, "method.reallocate", "method"))
        extra = {"init_r": init_r, "target_r": target_r, "total_step": total, "tinit": tinit, "tfinal": tfinal,
                 "target_modules": targets, "reallocate": reallocate}
        return AdaLoRAHandle(model=peft_model, name=self.name, extra=extra, tuner=peft_model.base_model,
                             reallocate=reallocate)

    def apply_delta(self, model: nn.Module, delta: Delta, ctx: MethodContext) -> MethodHandle:
        peft_model = load_peft(model, delta)
        extra = {k: v for k, v in (delta.meta.get("method_state") or {}).items() if k not in ("ranks", "rank_total")}
        return AdaLoRAHandle(model=peft_model, name=self.name, extra=extra, tuner=peft_model.base_model,
                             reallocate=False)
