"""Loading models and their input preprocessors, through the model family of ``model.family``.

Every model goes through ``from_pretrained``: hub ids and local folders directly, random-init models
(``model.random_init=true``, e.g. ``tiny-opt``) after being materialised once from ``model.arch`` into
``<cache_dir>/models/<name>-<hash>``. Tests and smoke runs therefore exercise the same code path as
real checkpoints.

The families (:mod:`rmpeft.families`) are registered here: ``causal_lm`` (the default, defined in this
module) and ``clip``, an image classifier (:mod:`rmpeft.vision.family`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

import rmpeft.vision.family  # noqa: F401  (registers the clip family)
from rmpeft.checkpoints import is_complete, random_init_folder, write_once
from rmpeft.errors import RmpeftError, unknown_choice
from rmpeft.families import DEFAULT_FAMILY, FAMILIES, ModelFamily, register_family
from rmpeft.gguf_models import materialize_gguf_model
from rmpeft.validation import PRECISIONS

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX-512 BF16 or AMX); without them CPU autocast in
    bf16 computes in bf16 but runs slower than fp32."""
    cpu = torch.cpu
    return any(getattr(cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 on a GPU that supports it, else fp16; fp32 on CPU.

    The rule: ``auto`` picks a lower precision only where it is measured faster with results that
    agree. On a GPU that is bf16 (fp16 where bf16 is missing). On CPU it stays fp32 on every CPU:
    bf16 autocast was measured 4x (evaluation) to 29x (training) slower than fp32 on a CPU without
    bf16 instructions (docs/performance.md) and has not been measured on one with them; ``trainer.precision=bf16``
    asks for it explicitly. The rule depends on the device type only, so a config's identity does
    not depend on which CPU resolves it."""
    if precision not in PRECISIONS:
        raise RmpeftError(f"unknown trainer.precision '{precision}'; valid choices: {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def torch_dtype(precision: str) -> torch.dtype:
    return _DTYPES[precision]


def get_family(model_cfg: Any) -> ModelFamily:
    """The family of ``model.family`` (:data:`rmpeft.families.DEFAULT_FAMILY` when absent); an unknown
    name raises a one-line error listing the families."""
    name = str(model_cfg.get("family") or DEFAULT_FAMILY)
    if name not in FAMILIES:
        raise unknown_choice("model.family", name, FAMILIES)
    return FAMILIES[name]


def hf_config_from_arch(arch: dict[str, Any]):
    """A transformers config built from the architecture facts of a model config group."""
    from transformers import AutoConfig

    arch = dict(_plain(arch))
    model_type = arch.pop("model_type")
    return AutoConfig.for_model(model_type, **arch)


def build_model_on_meta(model_cfg: Any) -> nn.Module:
    """The model described by ``model_cfg.arch`` on the meta device: shapes only, no memory, no download."""
    return get_family(model_cfg).on_meta(model_cfg)


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
    folder, init_seed = random_init_folder(cfg, cache_dir)
    if is_complete(folder):
        return folder
    tokenizer = build_byte_tokenizer()
    config = hf_config_from_arch(cfg["arch"])
    if config.vocab_size < len(tokenizer):
        raise RmpeftError(f"model.arch.vocab_size={config.vocab_size} is smaller than the tokenizer ({len(tokenizer)})")
    gen = torch.random.fork_rng(devices=[])
    with gen:
        torch.manual_seed(init_seed)
        model = AutoModelForCausalLM.from_config(config)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    write_once(folder, write)
    log.info("materialised random-init model %s at %s", cfg["name"], folder)
    return folder


def model_source(model_cfg: Any, cache_dir: str | Path) -> str:
    """Where ``from_pretrained`` loads the model from (the family's :meth:`ModelFamily.source`)."""
    return get_family(model_cfg).source(model_cfg, cache_dir)


def load_model_and_tokenizer(model_cfg: Any, cache_dir: str | Path, dtype: torch.dtype = torch.float32,
                             task_cfg: Any = None) -> tuple[nn.Module, Any]:
    """Load (model, input preprocessor) through ``from_pretrained``, as the model's family does: a causal
    LM with its tokenizer, an image classifier with its image processor (its head built for
    ``task_cfg``'s classes)."""
    return get_family(model_cfg).load(model_cfg, cache_dir, dtype, task_cfg)


@register_family
class CausalLM(ModelFamily):
    """A Hugging Face causal LM and its tokenizer (which gets a pad token if it has none)."""

    name = DEFAULT_FAMILY

    def source(self, model_cfg: Any, cache_dir: str | Path) -> str:
        """Hub id, local folder, a materialised random init, or a packaged GGUF file converted once
        (``model.gguf``, see :mod:`rmpeft.gguf_models`)."""
        if model_cfg.get("random_init"):
            return str(materialize_random_model(model_cfg, cache_dir))
        source = model_cfg.get("name_or_path")
        if not source and model_cfg.get("gguf"):
            return str(materialize_gguf_model(model_cfg, cache_dir))
        if not source:
            raise RmpeftError(f"model '{model_cfg.get('name')}' has no name_or_path; "
                              "set model.name_or_path=<hub id or folder>")
        return str(source)

    def load(self, model_cfg: Any, cache_dir: str | Path, dtype: torch.dtype, task_cfg: Any) -> tuple[nn.Module, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        source = self.source(model_cfg, cache_dir)
        revision = model_cfg.get("revision") or None
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
            model = AutoModelForCausalLM.from_pretrained(source, revision=revision, dtype=dtype)
        except OSError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RmpeftError(f"cannot load model '{source}': {first}") from e
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        set_first_token(tokenizer, model_cfg.get("first_token_id"))
        return model, tokenizer

    def on_meta(self, model_cfg: Any) -> nn.Module:
        from transformers import AutoModelForCausalLM

        config = hf_config_from_arch(model_cfg["arch"])
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)


def set_first_token(tokenizer: Any, token_id: int | None) -> None:
    """Make ``token_id`` the token put before every input (``model.first_token_id``; None: unchanged).

    rmpeft encodes without the tokenizer's special tokens and prepends ``tokenizer.bos_token_id``
    itself, so this is MeZO's ``tokenizer.bos_token_id = 0`` for OPT as it acted with the slow
    tokenizers of its time: every input starts with ``<s>`` (id 0) instead of ``</s>`` (id 2). (With
    today's tokenizers-backed OPT tokenizer that assignment changes the reported id but not what
    ``encode`` prepends; see docs/fidelity.md.)
    """
    if token_id is None:
        return
    if not 0 <= int(token_id) < len(tokenizer):
        raise RmpeftError(f"model.first_token_id={token_id} is outside the tokenizer's ids [0, {len(tokenizer)})")
    tokenizer.bos_token_id = int(token_id)
