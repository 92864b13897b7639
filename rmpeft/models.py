"""Loading causal LMs and their tokenizers.

Every model goes through ``from_pretrained``: hub ids and local folders directly, random-init models
(``model.random_init=true``, e.g. ``tiny-opt``) after being materialised once from ``model.arch`` into
``<cache_dir>/models/<name>-<hash>``. Tests and smoke runs therefore exercise the same code path as
real checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from rmpeft.errors import RmpeftError

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> fp32 on CPU, bf16 on a GPU that supports it, else fp16."""
    if precision not in PRECISIONS:
        raise RmpeftError(f"unknown trainer.precision '{precision}'; valid choices: {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def torch_dtype(precision: str) -> torch.dtype:
    return _DTYPES[precision]


def hf_config_from_arch(arch: dict[str, Any]):
    """A transformers config built from the architecture facts of a model config group."""
    from transformers import AutoConfig

    arch = dict(_plain(arch))
    model_type = arch.pop("model_type")
    return AutoConfig.for_model(model_type, **arch)


def build_model_on_meta(model_cfg: Any) -> nn.Module:
    """The model described by ``model_cfg.arch`` on the meta device: shapes only, no memory, no download."""
    from transformers import AutoModelForCausalLM

    config = hf_config_from_arch(model_cfg["arch"])
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def count_parameters(model: nn.Module) -> int:
    """All parameters of a model (tied weights counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def build_byte_tokenizer():
    """A byte-level tokenizer (no merges) with OPT's special-token layout: <s>=0 <pad>=1 </s>=2 <unk>=3.

    Any text round-trips; used by random-init models so that they work offline.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(specials + alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="</s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def materialize_random_model(model_cfg: Any, cache_dir: str | Path) -> Path:
    """Save a randomly initialised model (from ``model_cfg.arch``, seed ``model_cfg.init_seed``) and its
    tokenizer as a normal checkpoint folder; reuse it when it exists. Returns the folder."""
    from transformers import AutoModelForCausalLM

    cfg = _plain(model_cfg)
    spec = {"arch": cfg["arch"], "init_seed": cfg.get("init_seed", 0), "tokenizer": cfg.get("tokenizer", "byte")}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(cache_dir) / "models" / f"{cfg['name']}-{digest}"
    if (folder / "config.json").exists():
        return folder
    if spec["tokenizer"] != "byte":
        raise RmpeftError(f"unknown model.tokenizer '{spec['tokenizer']}' for a random-init model; valid choices: byte")
    tokenizer = build_byte_tokenizer()
    config = hf_config_from_arch(cfg["arch"])
    if config.vocab_size < len(tokenizer):
        raise RmpeftError(f"model.arch.vocab_size={config.vocab_size} is smaller than the tokenizer ({len(tokenizer)})")
    gen = torch.random.fork_rng(devices=[])
    with gen:
        torch.manual_seed(int(spec["init_seed"]))
        model = AutoModelForCausalLM.from_config(config)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process created it first
            if not (folder / "config.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("materialised random-init model %s at %s", cfg["name"], folder)
    return folder


def model_source(model_cfg: Any, cache_dir: str | Path) -> str:
    """Where ``from_pretrained`` loads the model from: hub id, local folder, or a materialised random init."""
    if model_cfg.get("random_init"):
        return str(materialize_random_model(model_cfg, cache_dir))
    source = model_cfg.get("name_or_path")
    if not source:
        raise RmpeftError(f"model '{model_cfg.get('name')}' has no name_or_path; set model.name_or_path=<hub id or folder>")
    return str(source)


def load_model_and_tokenizer(model_cfg: Any, cache_dir: str | Path, dtype: torch.dtype = torch.float32):
    """Load (model, tokenizer) through ``from_pretrained``. The tokenizer gets a pad token if it has none."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    source = model_source(model_cfg, cache_dir)
    revision = model_cfg.get("revision") or None
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(source, revision=revision, dtype=dtype)
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RmpeftError(f"cannot load model '{source}': {first}") from e
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
