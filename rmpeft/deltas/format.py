"""The delta folder: what a run learned, as safetensors files plus one JSON metadata file.

A delta is a folder::

    <delta>/delta.json              metadata (format, method and its config, base model and its
                                    fingerprint, run identity and metrics, file checksums)
    <delta>/delta.safetensors       the method's tensors (masking, structured masking, adapters,
                                    BitFit, full fine-tuning)
    <delta>/adapter_config.json     LoRA, AdaLoRA, prefix: peft's own adapter files instead, so that
    <delta>/adapter_model.safetensors   ``PeftModel.from_pretrained(base, <delta>)`` loads them

``delta.json`` lists every tensor file with its size and SHA-256; :func:`open_delta` checks them, so a
truncated or corrupt delta is refused before anything loads. The delta's ``fingerprint`` hashes those
checksums with the method and the base fingerprint: two deltas share it only when they hold the same
update for the same base. See docs/deltas.md.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rmpeft.errors import RmpeftError
from rmpeft.records import atomic_write_json

FORMAT = "rmpeft-delta"
FORMAT_VERSION = 1
META_FILE = "delta.json"
TENSOR_FILE = "delta.safetensors"
PEFT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
HASH_CHARS = 16


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_tensors(folder: Path, tensors: dict[str, torch.Tensor], method: str) -> None:
    """Write ``tensors`` (contiguous CPU copies, no shared storage) to ``<folder>/delta.safetensors``."""
    from safetensors.torch import save_file

    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    save_file(plain, str(Path(folder) / TENSOR_FILE), metadata={"format": FORMAT, "method": method})


def tensor_files(folder: Path) -> list[str]:
    """The tensor files a delta folder holds (its own and peft's)."""
    return [name for name in (TENSOR_FILE, *PEFT_FILES) if (Path(folder) / name).is_file()]


def delta_fingerprint(method: str, base_fingerprint: str, files: dict[str, dict[str, Any]]) -> str:
    """Hash of the method, the base fingerprint and the tensor files' checksums."""
    tree = {"method": method, "base": base_fingerprint, "files": {k: v["sha256"] for k, v in sorted(files.items())}}
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:HASH_CHARS]


def finish_metadata(folder: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Add the tensor files' sizes and checksums and the delta fingerprint to ``meta``; write ``delta.json``."""
    folder = Path(folder)
    files = {name: {"bytes": (folder / name).stat().st_size, "sha256": file_sha256(folder / name)}
             for name in tensor_files(folder)}
    if not files:
        raise RmpeftError(f"delta {folder}: the method wrote no tensor file")
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta, "files": files,
            "bytes": sum(f["bytes"] for f in files.values())}
    meta["fingerprint"] = delta_fingerprint(meta["method"], meta["base"]["fingerprint"], files)
    atomic_write_json(folder / META_FILE, meta)
    return meta


@dataclass
class Delta:
    """An opened, checked delta folder."""

    path: Path
    meta: dict[str, Any]

    @property
    def method(self) -> str:
        return str(self.meta["method"])

    @property
    def method_config(self) -> dict[str, Any]:
        return dict(self.meta["method_config"])

    @property
    def fingerprint(self) -> str:
        return str(self.meta["fingerprint"])

    @property
    def bytes(self) -> int:
        return int(self.meta["bytes"])

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors of ``delta.safetensors`` (CPU)."""
        from safetensors.torch import load_file

        path = self.path / TENSOR_FILE
        if not path.is_file():
            raise RmpeftError(f"delta {self.path}: {TENSOR_FILE} is missing")
        return load_file(str(path))


def open_delta(path: Path | str) -> Delta:
    """Open a delta folder (or its ``delta.json``) and check its metadata and file checksums.

    A missing, truncated or corrupt delta is a one-line :class:`RmpeftError`.
    """
    folder = Path(path)
    if folder.name == META_FILE:
        folder = folder.parent
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise RmpeftError(f"{folder} is not a delta: {META_FILE} not found (export one with rmpeft-export RUN_DIR)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RmpeftError(f"corrupt delta {folder}: {META_FILE} is not valid JSON") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise RmpeftError(f"corrupt delta {folder}: {META_FILE} is not an {FORMAT} file")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise RmpeftError(f"delta {folder} has format_version {meta['format_version']}; this rmpeft reads "
                          f"up to {FORMAT_VERSION}")
    missing = [k for k in ("method", "method_config", "base", "files", "fingerprint") if k not in meta]
    if missing:
        raise RmpeftError(f"corrupt delta {folder}: {META_FILE} lacks {', '.join(missing)}")
    for name, facts in meta["files"].items():
        f = folder / name
        if not f.is_file():
            raise RmpeftError(f"corrupt delta {folder}: {name} is missing")
        size = f.stat().st_size
        if size != facts["bytes"]:
            raise RmpeftError(f"corrupt delta {folder}: {name} has {size} bytes, expected {facts['bytes']} "
                              "(truncated or modified)")
        if file_sha256(f) != facts["sha256"]:
            raise RmpeftError(f"corrupt delta {folder}: {name} does not match its SHA-256 in {META_FILE}")
    return Delta(folder, meta)
