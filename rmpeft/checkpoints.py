"""Checkpoint folders derived into the cache (random-init models, conversions): named by a hash of what
they are built from, written once and moved into place atomically, so that concurrent runs share them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rmpeft.errors import unknown_choice

RANDOM_INIT_TOKENIZERS = ("byte",)


def derived_folder(cache_dir: str | Path, name: str, spec: dict[str, Any]) -> Path:
    """``<cache_dir>/models/<name>-<12 hex digits of spec's hash>``."""
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache_dir) / "models" / f"{name}-{digest}"


def random_init_folder(cfg: dict[str, Any], cache_dir: str | Path) -> tuple[Path, int]:
    """The folder of a random-init model config (``name``, ``arch``, ``init_seed``, ``tokenizer``) and
    its init seed; the folder's name changes with anything the checkpoint is built from."""
    spec = {"arch": cfg["arch"], "init_seed": cfg.get("init_seed", 0), "tokenizer": cfg.get("tokenizer", "byte")}
    if spec["tokenizer"] not in RANDOM_INIT_TOKENIZERS:
        raise unknown_choice("model.tokenizer for a random-init model", spec["tokenizer"], RANDOM_INIT_TOKENIZERS)
    return derived_folder(cache_dir, cfg["name"], spec), int(spec["init_seed"])


def is_complete(folder: Path) -> bool:
    """A finished checkpoint folder (its ``config.json`` is written)."""
    return (folder / "config.json").exists()


def write_once(folder: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` into a temporary sibling of ``folder`` and move it into place atomically; a
    folder another process finished first is kept. Returns ``folder``."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        write(tmp)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process created it first
            if not is_complete(folder):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
