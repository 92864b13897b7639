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
FOLDER_HASH_CHARS = 12   # hex digits of the spec's hash in a derived folder's name


def derived_folder(cache_dir: str | Path, name: str, spec: dict[str, Any]) -> Path:
    """``<cache_dir>/models/<name>-<FOLDER_HASH_CHARS hex digits of spec's hash>``."""
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:FOLDER_HASH_CHARS]
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


def write_once(folder: Path, write: Callable[[Path], None], replace: bool = False) -> Path:
    """Run ``write(tmp)`` into a temporary sibling of ``folder`` and move it into place by rename, so that
    a reader never sees a partial folder. A folder another process finished first is kept; with
    ``replace``, an existing folder is moved aside first and removed after. Returns ``folder``."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    aside = folder.with_name(f".{folder.name}.old-{tmp.name}")
    try:
        write(tmp)
        if replace and folder.exists():
            os.rename(folder, aside)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process created it first
            if not is_complete(folder):
                raise
    finally:
        if aside.exists() and not folder.exists():   # the new folder did not take its place
            os.rename(aside, folder)
        for leftover in (tmp, aside):
            if leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
    return folder
