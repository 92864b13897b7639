"""Prefix tuning (Li & Liang, 2021) through peft, initialised from real-word activations.

Every attention layer gets ``num_virtual_tokens`` extra key/value pairs that all positions attend to.
They start as the keys and values the frozen model itself produces for random vocabulary tokens
(so the model initially behaves as if those words preceded the input) and are trained directly,
without the MLP reparameterisation (peft's ``prefix_projection=False``).

peft (>= 0.17 with transformers 5) handles OPT's prefix cache for ``forward`` and ``generate``; only the
initialisation is ours: peft draws the prefix at random, so we overwrite its table with activations.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rmpeft.errors import RmpeftError
from rmpeft.methods.base import MethodContext, MethodHandle
from rmpeft.methods.peft_delta import PeftMethod
from rmpeft.methods.registry import register_method
from rmpeft.validation import Int


def real_word_ids(vocab_size: int, count: int, seed: int, tokenizer: Any = None) -> list[int]:
    """``count`` distinct token ids drawn uniformly from the vocabulary, special tokens excluded."""
    size = min(vocab_size, len(tokenizer)) if tokenizer is not None else vocab_size
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    candidates = torch.tensor([i for i in range(size) if i not in special])
    if len(candidates) < count:
        raise RmpeftError(f"prefix: the vocabulary has only {len(candidates)} ordinary tokens, "
                          f"fewer than method.num_virtual_tokens={count}")
    gen = torch.Generator().manual_seed(int(seed))
    return candidates[torch.randperm(len(candidates), generator=gen)[:count]].tolist()


@torch.no_grad()
def layer_key_values(model: nn.Module, token_ids: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the (keys, values) the model caches for ``token_ids``: each (heads, tokens, head_dim)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        cache = model(input_ids=torch.tensor([token_ids], device=device), use_cache=True).past_key_values
    finally:
        model.train(was_training)
    if hasattr(cache, "layers"):
        return [(layer.keys[0], layer.values[0]) for layer in cache.layers]
    return [(k[0], v[0]) for k, v in cache]  # legacy tuple-of-tuples cache


def prefix_table(kv: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Lay per-layer keys/values out as peft's prefix table: row t = [K_0, V_0, K_1, V_1, ...] of token t.

    peft reads row t as (layers*2, heads, head_dim) and takes entry 2l as layer l's key, 2l+1 its value.
    """
    stacked = torch.stack([torch.stack([k, v]) for k, v in kv])  # (layers, 2, heads, tokens, head_dim)
    tokens = stacked.shape[3]
    return stacked.permute(3, 0, 1, 2, 4).reshape(tokens, -1)


@register_method("prefix", label="Prefix")
class PrefixTuning(PeftMethod):
    """peft prefix tuning without reparameterisation, keys/values initialised from real words."""

    config_fields = {"num_virtual_tokens": Int(1)}

    model_families = ("causal_lm",)     # the prefix is past keys/values of a causal LM's attention
    mergeable = False                   # the prefix adds attention inputs, not a weight update
    output_unchanged_at_init = False    # the prefix's keys and values are attended to from the start

    def apply(self, model: nn.Module, cfg: Any, ctx: MethodContext) -> MethodHandle:
        from peft import PrefixTuningConfig, TaskType, get_peft_model

        n = int(cfg.num_virtual_tokens)
        if n <= 0:
            raise RmpeftError(f"method.num_virtual_tokens must be positive, got {n}")
        on_meta = any(p.is_meta for p in model.parameters())
        ids = real_word_ids(model.config.vocab_size, n, ctx.seed, ctx.tokenizer)
        table = None if on_meta else prefix_table(layer_key_values(model, ids))
        config = PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=n, prefix_projection=False)
        peft_model = get_peft_model(model, config)
        if table is not None:
            weight = peft_model.prompt_encoder[peft_model.active_adapter].embedding.weight
            if weight.shape != table.shape:
                raise RmpeftError(f"prefix: the model's cache layout {tuple(table.shape)} does not match "
                                  f"peft's prefix table {tuple(weight.shape)}")
            with torch.no_grad():
                weight.copy_(table.to(weight.dtype))
        extra = {"num_virtual_tokens": n, "init_token_ids": ids}
        return MethodHandle(model=peft_model, name=self.name, extra=extra)
