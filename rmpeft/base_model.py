"""A fingerprint of the base model a delta was trained on, computed from its checkpoint folder.

The fingerprint hashes the checkpoint's ``config.json`` (without the keys that vary between saves of the
same weights: library version, dtype, path) and, for every weight file, its name, size and the bytes of
its first and last MiB. It is cheap (no weight is loaded), independent of the load dtype and of where
the folder lives, and it tells apart checkpoints of the same architecture with different weights
(another random init, a fine-tuned variant). A hub id is fingerprinted from its locally cached snapshot;
a hub id that is not cached falls back to its name and revision.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from rmpeft.identity import FINGERPRINT_CHARS
from rmpeft.models import model_source

VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path", "torch_dtype", "dtype", "_commit_hash")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
SAMPLE_BYTES = 1 << 20


def _local_folder(source: str, revision: str | None) -> Path | None:
    if Path(source).expanduser().is_dir():
        return Path(source).expanduser()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=source, revision=revision, local_files_only=True))
    except Exception:  # not cached (or not a hub id): fall back to the name
        return None


def _file_digest(path: Path) -> str:
    size = path.stat().st_size
    h = hashlib.sha256(f"{path.name}:{size}".encode())
    with open(path, "rb") as f:
        h.update(f.read(SAMPLE_BYTES))
        if size > SAMPLE_BYTES:
            f.seek(max(SAMPLE_BYTES, size - SAMPLE_BYTES))
            h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()


def folder_fingerprint(folder: Path) -> str:
    """Fingerprint of a checkpoint folder (config and weight files)."""
    h = hashlib.sha256()
    config = folder / "config.json"
    if config.is_file():
        facts = {k: v for k, v in json.loads(config.read_text()).items() if k not in VOLATILE_CONFIG_KEYS}
        h.update(json.dumps(facts, sort_keys=True).encode())
    for path in sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file()):
        h.update(_file_digest(path.resolve()).encode())
    return h.hexdigest()[:FINGERPRINT_CHARS]


def base_fingerprint(model_cfg: Any, cache_dir: str | Path) -> dict[str, Any]:
    """``{"name", "source", "revision", "fingerprint", "from"}`` of the model a config loads."""
    source = model_source(model_cfg, cache_dir)
    revision = model_cfg.get("revision") or None
    folder = _local_folder(source, revision)
    if folder is not None:
        fingerprint, basis = folder_fingerprint(folder), "weights"
    else:
        text = json.dumps({"source": source, "revision": revision}, sort_keys=True)
        fingerprint, basis = hashlib.sha256(text.encode()).hexdigest()[:FINGERPRINT_CHARS], "name"
    return {"name": str(model_cfg.get("name")), "source": source, "revision": revision,
            "fingerprint": fingerprint, "from": basis}
