"""The benchmark's model (random weights, shapes from ``conf/model``) and its one batch."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from rmpeft.config import CONF_DIR, group_choices
from rmpeft.errors import RmpeftError, unknown_choice
from rmpeft.models import hf_config_from_arch, model_source

# The quick CPU shape of `--small`: not a model of the suite, so it lives here, as changes to OPT-125m's arch.
SMALL = "small"
SMALL_ARCH = dict(hidden_size=256, num_hidden_layers=4, ffn_dim=1024, num_attention_heads=4, vocab_size=2048,
                  word_embed_proj_dim=256)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TARGETS = ["q_proj", "v_proj"]


def model_choices() -> list[str]:
    """Shapes ``--model`` accepts: every ``conf/model`` config, and ``small``."""
    return sorted([*group_choices("model"), SMALL])


def model_arch(shape: str) -> dict[str, Any]:
    """Architecture facts of a shape: ``arch`` of ``conf/model/<shape>.yaml`` (``small``: OPT-125m's, resized)."""
    if shape not in model_choices():
        raise unknown_choice("--model", shape, model_choices())
    name = "opt-125m" if shape == SMALL else shape
    arch = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml").arch, resolve=True)
    return {**arch, **SMALL_ARCH} if shape == SMALL else arch


def build_model(shape: str, dtype: torch.dtype, device: torch.device, seed: int = 0) -> nn.Module:
    """A randomly initialised model with the named shape (built from its config: no download)."""
    from transformers import AutoModelForCausalLM

    config = hf_config_from_arch({**model_arch(shape), "dropout": 0.0, "attention_dropout": 0.0})
    torch.manual_seed(seed)
    with torch.device(device):  # initialise where it will run (fast on a GPU)
        model = AutoModelForCausalLM.from_config(config)
    return _frozen_eval(model, dtype)


def _frozen_eval(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    model.to(dtype=dtype)
    model.eval()  # no dropout: every row computes the same function
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def default_cache_dir() -> Path:
    """The runs' default ``cache_dir`` (``conf/train.yaml``): ``$RMPEFT_CACHE``, else ``~/.cache/rmpeft``."""
    return Path(os.environ.get("RMPEFT_CACHE") or Path.home() / ".cache" / "rmpeft")


def pretrained_source(shape: str) -> str | None:
    """Where the shape's real weights load from without a download, else None: a model packaged on this
    machine (``model.gguf``: SmolLM2-135M with the ``rmpeft[smollm2]`` extra), converted once into the
    cache exactly as a run does."""
    if shape == SMALL:
        return None
    cfg = OmegaConf.load(CONF_DIR / "model" / f"{shape}.yaml")
    if not cfg.get("gguf") or cfg.get("name_or_path"):
        return None
    try:
        return model_source(cfg, default_cache_dir())
    except RmpeftError:  # the package is not installed here
        return None


def load_pretrained(source: str, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """The real model at ``source`` (:func:`pretrained_source`), frozen, in eval mode."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return _frozen_eval(AutoModelForCausalLM.from_pretrained(source, dtype=dtype).to(device), dtype)


def make_batch(vocab: int, batch: int, seq: int, device: torch.device) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1234)
    ids = torch.randint(4, vocab, (batch, seq), generator=gen).to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
