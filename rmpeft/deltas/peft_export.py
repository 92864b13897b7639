"""``rmpeft-export RUN_OR_DELTA --format peft --out DIR``: a delta as a peft adapter folder.

Random Masking and Structured Masking deltas become SHiRA or Super-Tuning adapters
(:mod:`rmpeft.methods.peft_sparse`; ``--peft-type auto`` picks the one storing the fewest bytes). LoRA,
AdaLoRA and prefix deltas already are peft folders and are copied. Every folder gets a model card
(``README.md``: method, ratio, task, metrics, base model and its fingerprint) and ``rmpeft.json`` (the
source delta's metadata and the adapter files' checksums), which lets ``rmpeft-eval`` and
``rmpeft-merge`` reproduce the run from the folder alone; peft ignores both files.
"""

from __future__ import annotations

import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rmpeft.checkpoints import write_once
from rmpeft.methods.delta_format import Delta, file_sha256, open_delta
from rmpeft.methods.peft_sparse import (
    CONFIG_FILE,
    PEFT_TYPES,
    WEIGHTS_FILE,
    delta_entries,
    smallest_type,
    tensor_bytes,
    write_adapter,
)
from rmpeft.errors import RmpeftError, unknown_choice
from rmpeft.models import get_family
from rmpeft.records import atomic_write_json, versions
from rmpeft.run_folder import share_like_umask

EXPORT_FILE = "rmpeft.json"
CARD_FILE = "README.md"
EXPORT_FORMAT = "rmpeft-peft-adapter"
EXPORT_VERSION = 1
SPARSE_METHODS = ("masking", "structured_masking")
LABELS = {"masking": "Random Masking", "structured_masking": "Structured Masking", "lora": "LoRA",
          "adalora": "AdaLoRA", "prefix": "prefix tuning"}


def source_delta(source: Path, scratch: Path) -> Delta:
    """The delta of a run folder (exported into ``scratch`` as ``rmpeft-export`` does) or a delta folder."""
    from rmpeft.deltas.export import export_run
    from rmpeft.methods.delta_format import META_FILE

    if (source / META_FILE).is_file():
        return open_delta(source)
    if (source / "record.json").is_file():
        export_run(source, scratch / "delta")
        return open_delta(scratch / "delta")
    raise RmpeftError(f"{source} is neither a run folder (record.json) nor a delta ({META_FILE})")


def _files(folder: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    return {n: {"bytes": (folder / n).stat().st_size, "sha256": file_sha256(folder / n)} for n in names}


def export_peft_folder(source: Path | str, out: Path | str, peft_type: str = "auto") -> dict[str, Any]:
    """Write the delta of ``source`` (run or delta folder) to ``out`` as a peft adapter folder; returns
    the ``rmpeft.json`` metadata."""
    source, out = Path(source), Path(out)
    if peft_type not in ("auto", *PEFT_TYPES):
        raise unknown_choice("--peft-type", peft_type, ("auto", *PEFT_TYPES))
    if out.exists():
        raise RmpeftError(f"--out {out} exists; choose a new path")
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))   # a run's delta, exported first
    meta: dict[str, Any] = {}

    def write(folder: Path) -> None:
        share_like_umask(folder)   # mkdtemp makes it private
        delta = source_delta(source, scratch)
        adapter = _write_adapter(delta, folder, peft_type)
        meta.update({"format": EXPORT_FORMAT, "format_version": EXPORT_VERSION, "adapter": adapter,
                     "files": _files(folder, [CONFIG_FILE, WEIGHTS_FILE]),
                     "delta": {k: v for k, v in delta.meta.items() if k not in ("format", "format_version")},
                     "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "versions": versions()})
        meta["bytes"] = sum(f["bytes"] for f in meta["files"].values())
        (folder / CARD_FILE).write_text(model_card(meta, out))
        atomic_write_json(folder / EXPORT_FILE, meta)

    try:
        write_once(out, write)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return meta


def _write_adapter(delta: Delta, folder: Path, peft_type: str) -> dict[str, Any]:
    family = get_family(((delta.meta.get("run") or {}).get("config") or {}).get("model", {}))
    layout = (delta.meta.get("delta") or {}).get("layout")
    if delta.method in SPARSE_METHODS:
        if not family.plain_checkpoint:
            raise RmpeftError(f"only causal-LM deltas export as peft adapters; this one is for a {family.name} model")
        entries = delta_entries(delta)
        chosen = smallest_type(entries) if peft_type == "auto" else peft_type
        mask_type = delta.method                    # not "random": peft then draws no throwaway mask on load
        facts = write_adapter(entries, folder, chosen, delta.meta["base"].get("source"), "CAUSAL_LM", mask_type)
        sizes = {t: tensor_bytes(entries, t) for t in PEFT_TYPES}
        return {**facts, "chosen_by": "fewest bytes" if peft_type == "auto" else "--peft-type",
                "tensor_bytes_by_type": sizes}
    if layout == "peft_adapter":
        if peft_type != "auto":
            raise RmpeftError(f"--peft-type applies to masking deltas; a {delta.method} delta is copied as it is")
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (delta.path / name).is_file():
                raise RmpeftError(f"corrupt delta {delta.path}: {name} is missing")
            shutil.copy2(delta.path / name, folder / name)
        from rmpeft.methods.peft_sparse import read_config

        return {"peft_type": str(read_config(folder)["peft_type"]), "copied": True}
    raise RmpeftError(f"{delta.method} deltas have no peft form; export them as rmpeft deltas (--format rmpeft)")


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def model_card(meta: dict[str, Any], out: Path) -> str:
    """The folder's README.md: what was trained, on what, how well, and how to load it."""
    d, a = meta["delta"], meta["adapter"]
    run, base, cfg = d.get("run") or {}, d.get("base") or {}, (d.get("run") or {}).get("config") or {}
    method, mcfg = d["method"], d.get("method_config") or {}
    task, metric = (cfg.get("task") or {}).get("name"), run.get("metric") or "metric"
    source = base.get("source") or base.get("name")
    hub = source if source and "/" in source and not Path(source).is_absolute() and not Path(source).exists() else None
    tags = ["rmpeft", method.replace("_", "-"), str(a["peft_type"]).lower()]
    front = ["---", "library_name: peft", *([f"base_model: {hub}"] if hub else []), "tags:",
             *[f"- {t}" for t in tags], "---", ""]
    trainable, total = run.get("trainable_params"), run.get("total_params")
    share = f"{100 * trainable / total:.4g}%" if trainable and total else "-"
    layout = f", layout {mcfg.get('layout')}" if method == "structured_masking" else ""
    storage = {"SHIRA": f"SHiRA, r={a.get('r')}", "SUPERTUNING": f"Super-Tuning, sparsity={a.get('sparsity')}"}
    rows = [
        ("method", f"{LABELS.get(method, method)} (`method={method}`{layout})"),
        ("ratio", _fmt(mcfg.get("ratio")) if "ratio" in mcfg else "-"),
        ("trainable entries", f"{trainable} of {total} parameters ({share})" if trainable else "-"),
        ("task", f"{task} ({metric})"),
        (f"validation {metric}", _fmt(run.get("val_metric"))),
        (f"test {metric}", _fmt(run.get("test_metric"))),
        ("best epoch", _fmt(run.get("best_epoch"))),
        ("learning rate, seed", f"{(cfg.get('optim') or {}).get('lr')}, {cfg.get('seed')}"),
        ("base model", f"{base.get('name')} (`{source}`, revision {base.get('revision') or 'default'})"),
        ("base fingerprint", f"`{base.get('fingerprint')}` (from its {base.get('from')})"),
        ("rmpeft delta fingerprint", f"`{d.get('fingerprint')}`"),
        ("peft adapter", storage.get(a["peft_type"], a["peft_type"])
         + (f"; {a['entries']} entries stored as {a['stored_entries']} ({a['padding']} zero-valued padding)"
            if "stored_entries" in a else "")),
        ("adapter bytes", f"{meta['files'][WEIGHTS_FILE]['bytes']}"),
    ]
    table = ["| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]
    load = ["```python", "from transformers import AutoModelForCausalLM", "from peft import PeftModel", "",
            f"base = AutoModelForCausalLM.from_pretrained({source!r})",
            f"model = PeftModel.from_pretrained(base, {str(out.name)!r})   # this folder",
            "merged = model.merge_and_unload()                         # a plain model", "```"]
    needs = {"SHIRA": "peft >= 0.17", "SUPERTUNING": "peft >= 0.21"}.get(a["peft_type"], "peft")
    title = f"# {LABELS.get(method, method)} adapter: {base.get('name')} on {task}"
    return "\n".join([*front, title, "", f"Trained with rmpeft; loads with {needs} alone.", "", *table, "",
                      "## Load", "", *load, "", "## Evaluate or merge with rmpeft", "", "```bash",
                      f"rmpeft-eval {out.name}                 # the run's own validation and test sets",
                      f"rmpeft-merge {out.name} --out merged    # a plain Hugging Face checkpoint", "```", ""])
