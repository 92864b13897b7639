"""Merging a delta into its base model's weights (``rmpeft-merge DELTA --out DIR``).

The result is an ordinary Hugging Face checkpoint (``save_pretrained`` of the model and tokenizer, plus
``rmpeft_merge.json`` naming the delta) that ``AutoModelForCausalLM.from_pretrained(DIR)`` loads without
rmpeft or peft. Masking, Structured Masking, LoRA, AdaLoRA, BitFit and full fine-tuning merge;
adapters and prefix tuning add computation rather than a weight update and are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rmpeft.config import compose_config
from rmpeft.deltas.apply import check_base
from rmpeft.methods.delta_format import Delta
from rmpeft.errors import RmpeftError
from rmpeft.methods import MethodContext, get_method
from rmpeft.models import count_parameters, get_family, load_model_and_tokenizer
from rmpeft.records import atomic_write_json

MERGE_FILE = "rmpeft_merge.json"


def merge_delta(delta: Delta, out: Path, cache_dir: str | None = None) -> Path:
    """Write the base model with ``delta`` merged into ``out``; returns ``out``."""
    method = get_method(delta.method)
    if not method.mergeable:
        raise RmpeftError(f"{delta.method} deltas cannot be merged into the base weights (the method adds "
                          "computation, not a weight update); evaluate them with rmpeft-eval instead")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RmpeftError(f"--out {out} exists and is not an empty folder; choose a new folder")
    config: dict[str, Any] = delta.run_config
    family = get_family(config["model"])
    if not family.plain_checkpoint:
        raise RmpeftError(f"only causal-LM deltas merge into a Hugging Face checkpoint; this one is for a "
                          f"{family.name} model: evaluate it with rmpeft-eval instead")
    if cache_dir is None:   # this installation's (or this command line's), never the one stored in a delta
        cache_dir = config.get("cache_dir") if getattr(delta, "composed", False) else compose_config([]).cache_dir
    cache = str(cache_dir)
    check_base(delta, config["model"], cache)
    model, tokenizer = load_model_and_tokenizer(config["model"], cache, dtype=torch.float32)
    ctx = MethodContext(seed=int(config.get("seed", 0)), total_params=count_parameters(model), total_steps=1,
                        model_cfg=config["model"], tokenizer=tokenizer)
    handle = method.apply_delta(model, delta, ctx)
    merged = method.merged_model(handle)
    for p in merged.parameters():
        p.requires_grad_(False)
    merged.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    atomic_write_json(out / MERGE_FILE, {"delta": str(delta.path), "fingerprint": delta.fingerprint,
                                         "method": delta.method, "base": delta.meta["base"]})
    return out
