"""A tiny random CLIP for tests and smoke runs, saved once as a normal checkpoint folder.

``model.random_init=true`` models (e.g. ``tiny-clip``) are built from ``model.arch`` with seed
``model.init_seed``, together with a byte-level tokenizer (CLIP's start/end-of-text layout, no merges)
and a ``CLIPImageProcessor`` at the vision tower's image size, into
``<cache_dir>/models/<name>-<hash>``; loading then goes through ``from_pretrained`` like a real
checkpoint, offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from rmpeft.checkpoints import is_complete, random_init_folder, write_once
from rmpeft.errors import RmpeftError

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_TEXT_LENGTH = 77
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_config(arch: Any) -> Any:
    """The ``CLIPConfig`` of a model config's ``arch`` (``model_type: clip``, ``text_config``, ``vision_config``)."""
    from transformers import CLIPConfig

    arch = OmegaConf.to_container(arch, resolve=True) if isinstance(arch, DictConfig) else dict(arch)
    model_type = arch.pop("model_type", "clip")
    if model_type != "clip":
        raise RmpeftError(f"model.arch.model_type='{model_type}' is not an image classifier; valid choices: clip")
    return CLIPConfig(**arch)


def build_clip_byte_tokenizer() -> Any:
    """Byte-level tokenizer without merges: ``<|startoftext|>``=0, ``<|endoftext|>``=1 (also padding),
    then the 256 byte symbols; every text becomes ``<|startoftext|> bytes <|endoftext|>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([BOS, EOS] + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A {EOS}", special_tokens=[(BOS, 0), (EOS, 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=EOS,
                                   model_max_length=MAX_TEXT_LENGTH)


def build_image_processor(image_size: int) -> Any:
    """CLIP's preprocessing (shortest-edge resize, centre crop, OpenAI mean/std) at ``image_size``."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                              image_mean=list(OPENAI_MEAN), image_std=list(OPENAI_STD))


def materialize_tiny_clip(model_cfg: Any, cache_dir: str | Path) -> Path:
    """Save a random CLIP (``model_cfg.arch``, seed ``model_cfg.init_seed``), its tokenizer and image
    processor; reuse the folder when it exists. Returns the folder."""
    from transformers import CLIPModel

    cfg = OmegaConf.to_container(model_cfg, resolve=True) if isinstance(model_cfg, DictConfig) else dict(model_cfg)
    folder, init_seed = random_init_folder(cfg, cache_dir)
    if is_complete(folder):
        return folder
    tokenizer = build_clip_byte_tokenizer()
    config = clip_config(cfg["arch"])
    if config.text_config.vocab_size < len(tokenizer):
        raise RmpeftError(f"model.arch.text_config.vocab_size={config.text_config.vocab_size} is smaller than "
                          f"the tokenizer ({len(tokenizer)})")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = CLIPModel(config)
    processor = build_image_processor(int(config.vision_config.image_size))

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        processor.save_pretrained(tmp)

    return write_once(folder, write)


def clip_source(model_cfg: Any, cache_dir: str | Path) -> str:
    """Where ``from_pretrained`` loads a CLIP from: hub id, local folder, or the materialised tiny CLIP."""
    if model_cfg.get("random_init"):
        return str(materialize_tiny_clip(model_cfg, cache_dir))
    source = model_cfg.get("name_or_path")
    if not source:
        raise RmpeftError(f"model '{model_cfg.get('name')}' has no name_or_path; "
                          "set model.name_or_path=<hub id or folder>")
    return str(source)
