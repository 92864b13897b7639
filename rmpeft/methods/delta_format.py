"""The delta folder: what a run learned, as safetensors files plus one JSON metadata file.

A delta is a folder::

    <delta>/delta.json              metadata (format, method and its config, base model and its
                                    fingerprint, run identity and metrics, file checksums)
    <delta>/delta.safetensors       the method's tensors (masking, structured masking, adapters,
                                    BitFit, full fine-tuning)
    <delta>/adapter_config.json     LoRA, AdaLoRA, prefix: peft's own adapter files instead, so that
    <delta>/adapter_model.safetensors   ``PeftModel.from_pretrained(base, <delta>)`` loads them

``delta.json`` lists every other file of the folder with its size and SHA-256; :func:`open_delta` checks
them all (a file missing, modified, or present but not listed is refused before anything loads; names
are plain file names inside the folder). The delta's ``fingerprint`` hashes those checksums with the
method and the base fingerprint: two deltas share it only when they hold the same update for the same
base. What identifies a delta to an evaluation is :attr:`Delta.content_hash`, computed from the bytes of
its files, never read from ``delta.json``. See docs/deltas.md.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rmpeft.errors import RmpeftError
from rmpeft.identity import FINGERPRINT_CHARS
from rmpeft.records import atomic_write_json

FORMAT = "rmpeft-delta"
FORMAT_VERSION = 2        # 2: ``files`` lists every file of the folder; 1 listed the tensor files only
META_FILE = "delta.json"
# Files that version-1 deltas hold without listing them: peft's own, next to its weights.
V1_UNLISTED = ("adapter_config.json", "README.md")
TENSOR_FILE = "delta.safetensors"
PEFT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


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


def is_plain_name(name: Any) -> bool:
    """A file name that stays inside its folder: no separator, not ``.``/``..``, not ``delta.json``."""
    return (isinstance(name, str) and name not in ("", ".", "..", META_FILE)
            and not any(c in name for c in ("/", "\\", "\0")))


def content_hash(file_sha256s: dict[str, str]) -> str:
    """Hash of a folder's files, given as ``{relative name: SHA-256}``."""
    return hashlib.sha256(json.dumps(sorted(file_sha256s.items())).encode()).hexdigest()


def delta_fingerprint(method: str, base_fingerprint: str, files: dict[str, dict[str, Any]]) -> str:
    """Hash of the method, the base fingerprint and the tensor files' checksums."""
    tree = {"method": method, "base": base_fingerprint, "files": {k: v["sha256"] for k, v in sorted(files.items())}}
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:FINGERPRINT_CHARS]


def finish_metadata(folder: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Add every file's size and checksum, the tensor files' total size and the delta fingerprint to
    ``meta``; write ``delta.json``."""
    folder = Path(folder)
    if not tensor_files(folder):
        raise RmpeftError(f"delta {folder}: the method wrote no tensor file")
    names = sorted(p.name for p in folder.iterdir() if p.name != META_FILE)
    odd = [n for n in names if not (folder / n).is_file() or not is_plain_name(n)]
    if odd:
        raise RmpeftError(f"delta {folder}: the method wrote {', '.join(odd)}, which is not a plain file")
    files = {name: {"bytes": (folder / name).stat().st_size, "sha256": file_sha256(folder / name)} for name in names}
    meta = {"format": FORMAT, **meta, "format_version": FORMAT_VERSION, "files": files,
            "bytes": sum(files[name]["bytes"] for name in tensor_files(folder))}
    meta["fingerprint"] = delta_fingerprint(meta["method"], meta["base"]["fingerprint"], files)
    atomic_write_json(folder / META_FILE, meta)
    return meta


@dataclass
class Delta:
    """An opened, checked delta folder. ``checksums``: the SHA-256 of its files already computed."""

    path: Path
    meta: dict[str, Any]
    checksums: dict[str, str] = field(default_factory=dict, repr=False)

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

    @property
    def run_config(self) -> dict[str, Any]:
        """The resolved config of the run that trained the delta."""
        run = self.meta.get("run")
        config = run.get("config") if isinstance(run, dict) else None
        if not isinstance(config, dict):
            raise RmpeftError(f"corrupt delta {self.path}: {META_FILE} has no run config")
        return config

    @property
    def content_hash(self) -> str:
        """Hash of the bytes of every file in the folder (``delta.json`` included): what an evaluation
        of this delta is keyed by, so that deltas that differ in any byte never share one."""
        if not hasattr(self, "_content_hash"):
            sums = {}
            for p in sorted(q for q in self.path.rglob("*") if q.is_file()):
                name = p.relative_to(self.path).as_posix()
                sums[name] = self.checksums.get(name) or file_sha256(p)
            self._content_hash = content_hash(sums)
        return self._content_hash

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
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise RmpeftError(f"corrupt delta {folder}: {META_FILE} has format_version {version!r}, not an integer")
    if version > FORMAT_VERSION:
        raise RmpeftError(f"delta {folder} has format_version {meta['format_version']}; this rmpeft reads "
                          f"up to {FORMAT_VERSION}")
    missing = [k for k in ("method", "method_config", "base", "files", "fingerprint") if k not in meta]
    if missing:
        raise RmpeftError(f"corrupt delta {folder}: {META_FILE} lacks {', '.join(missing)}")
    files = meta["files"]
    if not isinstance(files, dict) or not isinstance(meta["base"], dict) or "fingerprint" not in meta["base"]:
        raise RmpeftError(f"corrupt delta {folder}: {META_FILE} has no valid 'files' or 'base'")
    checksums = {META_FILE: file_sha256(meta_path)}
    for name, facts in files.items():
        if not is_plain_name(name):
            raise RmpeftError(f"corrupt delta {folder}: {META_FILE} lists {name!r}, which is not a plain file name "
                              "inside the delta folder")
        if not isinstance(facts, dict) or not isinstance(facts.get("bytes"), int) \
                or not isinstance(facts.get("sha256"), str):
            raise RmpeftError(f"corrupt delta {folder}: {META_FILE} has no bytes/sha256 for {name}")
        f = folder / name
        if not f.is_file():
            raise RmpeftError(f"corrupt delta {folder}: {name} is missing")
        size = f.stat().st_size
        if size != facts["bytes"]:
            raise RmpeftError(f"corrupt delta {folder}: {name} has {size} bytes, expected {facts['bytes']} "
                              "(truncated or modified)")
        checksums[name] = file_sha256(f)
        if checksums[name] != facts["sha256"]:
            raise RmpeftError(f"corrupt delta {folder}: {name} does not match its SHA-256 in {META_FILE}")
    allowed = {META_FILE, *files, *(V1_UNLISTED if version < 2 else ())}
    extras = sorted(p.name for p in folder.iterdir() if p.name not in allowed)
    if extras:
        raise RmpeftError(f"corrupt delta {folder}: {extras[0]} is not listed in {META_FILE} (a file added to the "
                          "delta, or a listing edited)")
    if not any(name in files for name in tensor_files(folder)):
        raise RmpeftError(f"corrupt delta {folder}: {META_FILE} lists no tensor file "
                          f"({', '.join((TENSOR_FILE, *PEFT_FILES))})")
    if delta_fingerprint(str(meta["method"]), str(meta["base"]["fingerprint"]), files) != meta["fingerprint"]:
        raise RmpeftError(f"corrupt delta {folder}: its fingerprint does not match its method, base and files")
    for name in V1_UNLISTED:
        if name not in checksums and (folder / name).is_file():
            checksums[name] = file_sha256(folder / name)
    delta = Delta(folder, meta, checksums)
    _ = delta.content_hash   # taken now, from the bytes just checked
    return delta
