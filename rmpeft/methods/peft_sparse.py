"""peft's sparse adapters, SHiRA and Super-Tuning, as trained entries (values at flat positions).

Both adapters store, per target module ``<q>`` (its qualified name in the base model), a fixed number
of fp32 values and where they go in the weight, under ``base_model.model.<q>.<name>``:

* SHiRA (``peft_type: SHIRA``, peft >= 0.17): ``shira_weight`` (fp32, ``[K]``) and ``shira_indices``
  (int32, ``[2, K]``: rows, then columns), ``K = r * (in + out)`` for one ``r`` across modules.
* Super-Tuning (``peft_type: SUPERTUNING``, peft >= 0.21): ``supertuning_values`` (fp32, ``[K]``) and
  ``supertuning_indices`` (int32 flat row-major positions), ``K = int(in * out * (1 - sparsity))`` for
  one ``sparsity`` across modules.

A module holding fewer trained entries than its ``K`` is padded with zero values at one of its own
trained positions. peft adds repeated positions up (a sparse COO sum, a scatter-add), so the padding
changes nothing, and :func:`read_adapter` folds repeated positions back into one entry: a folder
written here reads back as exactly the entries it was written from. Only modules with trained entries
are targeted, by their full qualified names.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from rmpeft.methods.delta_format import Delta
from rmpeft.errors import RmpeftError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
KEY_PREFIX = "base_model.model."
PEFT_TYPES = ("shira", "supertuning")
TENSOR_NAMES = {"SHIRA": ("shira_weight", "shira_indices"),
                "SUPERTUNING": ("supertuning_values", "supertuning_indices")}


@dataclass
class Entries:
    """The trained entries of one ``out x in`` weight: sorted unique flat positions and their values."""

    shape: tuple[int, int]
    positions: torch.Tensor        # int64, sorted, unique
    values: torch.Tensor           # fp32

    @property
    def count(self) -> int:
        return int(self.positions.numel())

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]


def folded(shape: tuple[int, int], positions: torch.Tensor, values: torch.Tensor) -> Entries:
    """Entries with repeated positions summed into one (peft's semantics), sorted by position."""
    positions = positions.reshape(-1).long()
    values = values.reshape(-1).float()
    unique, inverse = torch.unique(positions, sorted=True, return_inverse=True)
    summed = torch.zeros(unique.numel(), dtype=torch.float32).index_add_(0, inverse, values)
    return Entries((int(shape[0]), int(shape[1])), unique, summed)


def delta_entries(delta: Delta) -> dict[str, Entries]:
    """The trained entries of a masking delta, by module (columns of pooled Structured Masking become
    the positions of all their rows)."""
    tensors = delta.tensors()
    shapes: dict[str, list[int]] = (delta.meta.get("delta") or {}).get("shapes") or {}
    entries: dict[str, Entries] = {}
    for q, (out, inn) in shapes.items():
        values = tensors.get(f"{q}.values")
        if values is None:
            raise RmpeftError(f"corrupt delta {delta.path}: {q}.values is missing")
        if f"{q}.positions" in tensors:
            positions = tensors[f"{q}.positions"].long()
        elif f"{q}.columns" in tensors:
            columns = tensors[f"{q}.columns"].long()
            positions = (torch.arange(out)[:, None] * inn + columns[None, :]).reshape(-1)
        else:
            raise RmpeftError(f"corrupt delta {delta.path}: {q} has neither positions nor columns")
        if values.numel() != positions.numel():
            raise RmpeftError(f"corrupt delta {delta.path}: {q} has {values.numel()} values for "
                              f"{positions.numel()} positions")
        if values.numel():
            entries[q] = folded((out, inn), positions, values)
    return entries


def supertuning_available() -> bool:
    """Whether the installed peft has Super-Tuning (peft >= 0.21)."""
    try:
        from peft import SupertuningConfig  # noqa: F401
    except ImportError:
        return False
    return True


# ---- sizes ------------------------------------------------------------------------------------------

def shira_rank(entries: dict[str, Entries]) -> int | None:
    """The smallest SHiRA ``r`` whose ``r * (in + out)`` holds every module's entries (None: no ``r``
    fits inside some weight)."""
    r = max(math.ceil(e.count / (e.shape[0] + e.shape[1])) for e in entries.values())
    r = max(r, 1)
    if any(r * (e.shape[0] + e.shape[1]) > e.numel for e in entries.values()):
        return None
    return r


def supertuning_sparsity(entries: dict[str, Entries]) -> float:
    """The largest ``sparsity`` whose ``int(numel * (1 - sparsity))`` holds every module's entries, as
    peft computes it."""
    sparsity = 1.0 - max(e.count / e.numel for e in entries.values())
    while sparsity > 0 and any(int(e.numel * (1 - sparsity)) < e.count for e in entries.values()):
        sparsity = math.nextafter(sparsity, -math.inf)
    return max(sparsity, 0.0)


def stored_counts(entries: dict[str, Entries], peft_type: str) -> dict[str, int]:
    """Entries stored per module (trained plus padding) in the ``peft_type`` layout."""
    if peft_type == "shira":
        r = shira_rank(entries)
        if r is None:
            raise RmpeftError("these entries do not fit SHiRA: r * (in + out) would exceed a target weight; "
                              "use --peft-type supertuning")
        return {q: r * (e.shape[0] + e.shape[1]) for q, e in entries.items()}
    s = supertuning_sparsity(entries)
    return {q: int(e.numel * (1 - s)) for q, e in entries.items()}


def tensor_bytes(entries: dict[str, Entries], peft_type: str) -> int | None:
    """Bytes of the adapter's tensors (without the safetensors header); None when it cannot hold them."""
    try:
        stored = sum(stored_counts(entries, peft_type).values())
    except RmpeftError:
        return None
    return stored * (12 if peft_type == "shira" else 8)   # fp32 + 2 x int32 | fp32 + int32


def smallest_type(entries: dict[str, Entries]) -> str:
    """The peft type storing ``entries`` in the fewest bytes (Super-Tuning on a tie; SHiRA when the
    installed peft has no Super-Tuning)."""
    sizes = {t: tensor_bytes(entries, t) for t in PEFT_TYPES}
    if not supertuning_available():
        sizes["supertuning"] = None
    fits = {t: b for t, b in sizes.items() if b is not None}
    if not fits:
        raise RmpeftError("these entries fit no peft sparse adapter this peft can load")
    return min(fits, key=lambda t: (fits[t], t != "supertuning"))


# ---- writing ----------------------------------------------------------------------------------------

def _padded(e: Entries, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    pad = k - e.count
    positions = torch.cat([e.positions, e.positions[:1].expand(pad)]) if pad else e.positions
    values = torch.cat([e.values, torch.zeros(pad, dtype=torch.float32)]) if pad else e.values
    return positions, values


def write_adapter(entries: dict[str, Entries], folder: Path, peft_type: str, base_model: str | None,
                  task_type: str | None, mask_type: str) -> dict[str, Any]:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors``; returns the layout facts."""
    from safetensors.torch import save_file

    if not entries:
        raise RmpeftError("the delta holds no trained entry to export")
    counts = stored_counts(entries, peft_type)
    tensors: dict[str, torch.Tensor] = {}
    value_name, index_name = TENSOR_NAMES[peft_type.upper()]
    for q, e in entries.items():
        positions, values = _padded(e, counts[q])
        if peft_type == "shira":
            index = torch.stack([positions // e.shape[1], positions % e.shape[1]])
        else:
            index = positions
        tensors[f"{KEY_PREFIX}{q}.{value_name}"] = values.contiguous()
        tensors[f"{KEY_PREFIX}{q}.{index_name}"] = index.to(torch.int32).contiguous()
    targets = sorted(entries)
    common = {"target_modules": targets, "task_type": task_type, "base_model_name_or_path": base_model,
              "inference_mode": True}
    if peft_type == "shira":
        from peft import ShiraConfig

        r = counts[targets[0]] // sum(entries[targets[0]].shape)
        config = ShiraConfig(r=r, mask_type=mask_type, **common)
        facts: dict[str, Any] = {"r": r}
    else:
        if not supertuning_available():
            raise RmpeftError("--peft-type supertuning needs peft >= 0.21 (pip install -U 'peft>=0.21')")
        from peft import SupertuningConfig

        sparsity = supertuning_sparsity(entries)
        config = SupertuningConfig(sparsity=sparsity, **common)
        facts = {"sparsity": sparsity}
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(folder))
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    entries_total = sum(e.count for e in entries.values())
    return {"peft_type": peft_type.upper(), **facts, "entries": entries_total,
            "stored_entries": sum(counts.values()), "padding": sum(counts.values()) - entries_total,
            "modules": len(entries)}


# ---- reading ----------------------------------------------------------------------------------------

def read_config(folder: Path) -> dict[str, Any]:
    """``adapter_config.json`` of a peft adapter folder (one-line errors when missing or unreadable)."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise RmpeftError(f"{folder} is not a peft adapter: {CONFIG_FILE} not found")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RmpeftError(f"corrupt adapter {folder}: {CONFIG_FILE} is not valid JSON") from None
    if not isinstance(config, dict) or "peft_type" not in config:
        raise RmpeftError(f"corrupt adapter {folder}: {CONFIG_FILE} has no peft_type")
    return config


def check_sparse_config(config: dict[str, Any], where: str) -> str:
    """The adapter's peft type (``SHIRA`` or ``SUPERTUNING``) after checking its config fits rmpeft."""
    peft_type = str(config.get("peft_type"))
    if peft_type not in TENSOR_NAMES:
        raise RmpeftError(f"adapter {where} has peft_type {peft_type}; rmpeft reads SHIRA and SUPERTUNING "
                          "adapters (and the folders rmpeft-export writes)")
    if config.get("modules_to_save"):
        raise RmpeftError(f"adapter {where} also trains whole modules (modules_to_save={config['modules_to_save']}); "
                          "rmpeft reads sparse entries only")
    if peft_type == "SHIRA" and config.get("fan_in_fan_out"):
        raise RmpeftError(f"adapter {where} is for fan_in_fan_out (Conv1D) weights; rmpeft reads nn.Linear ones")
    if peft_type == "SUPERTUNING":
        if config.get("r"):
            raise RmpeftError(f"adapter {where} is a Super-Tuning adapter with a LoRA part (r={config['r']}); "
                              "rmpeft reads sparse entries only")
        if config.get("save_precomputed_indices") is False:
            raise RmpeftError(f"adapter {where} stores no positions (save_precomputed_indices=false); rmpeft "
                              "needs the stored positions")
    return peft_type


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``adapter_model.safetensors`` (one-line errors when missing or unreadable)."""
    from safetensors.torch import load_file

    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        other = " (adapter_model.bin is not read: save with safe_serialization)" if (Path(folder) / "adapter_model.bin").is_file() else ""
        raise RmpeftError(f"corrupt adapter {folder}: {WEIGHTS_FILE} is missing{other}")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise RmpeftError(f"corrupt adapter {folder}: {WEIGHTS_FILE} cannot be read "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def _int_tensor(t: torch.Tensor, where: str, name: str) -> torch.Tensor:
    if t.is_floating_point():       # peft writes SHiRA indices as float32 on Windows
        if not torch.equal(t, t.round()):
            raise RmpeftError(f"corrupt adapter {where}: {name} holds non-integer positions")
    return t.long()


def read_adapter(folder: Path | str, shape_of: Callable[[str], tuple[int, int] | None]
                 ) -> tuple[dict[str, Any], dict[str, Entries]]:
    """(config, entries by module) of a SHiRA or Super-Tuning adapter folder.

    ``shape_of(q)`` gives the ``(out, in)`` shape of the base model's linear layer ``q`` (None: the base
    model has no such layer). Every count, shape and position is checked against it; repeated positions
    are summed into one entry. A mismatch is a one-line :class:`RmpeftError`.
    """
    folder = Path(folder)
    where = str(folder)
    config = read_config(folder)
    peft_type = check_sparse_config(config, where)
    value_name, index_name = TENSOR_NAMES[peft_type]
    tensors = load_weights(folder)
    by_module: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        body = key[len(KEY_PREFIX):] if key.startswith(KEY_PREFIX) else None
        q, _, name = (body or "").rpartition(".")
        if body is None or name not in (value_name, index_name) or not q:
            raise RmpeftError(f"corrupt adapter {where}: unexpected tensor {key} in a {peft_type} adapter")
        by_module.setdefault(q, {})[name] = t
    if not by_module:
        raise RmpeftError(f"corrupt adapter {where}: {WEIGHTS_FILE} holds no {peft_type} tensor")
    entries: dict[str, Entries] = {}
    for q, parts in sorted(by_module.items()):
        if set(parts) != {value_name, index_name}:
            missing = value_name if value_name not in parts else index_name
            raise RmpeftError(f"corrupt adapter {where}: {q}.{missing} is missing")
        shape = shape_of(q)
        if shape is None:
            raise RmpeftError(f"adapter {where} does not fit the base model: it has no linear layer {q}")
        out, inn = shape
        values, index = parts[value_name], _int_tensor(parts[index_name], where, f"{q}.{index_name}")
        if values.dim() != 1 or not values.is_floating_point():
            raise RmpeftError(f"corrupt adapter {where}: {q}.{value_name} is not a vector of floats")
        k = values.numel()
        if peft_type == "SHIRA":
            want = int(config.get("r") or 0) * (out + inn)
            if tuple(index.shape) != (2, k) or k != want:
                raise RmpeftError(f"adapter {where} does not fit the base model: {q} holds {k} entries with "
                                  f"indices of shape {tuple(index.shape)}, but SHiRA r={config.get('r')} on a "
                                  f"{out}x{inn} weight stores {want} with indices (2, {want})")
            rows, cols = index
            if (rows < 0).any() or (rows >= out).any() or (cols < 0).any() or (cols >= inn).any():
                raise RmpeftError(f"adapter {where} does not fit the base model: {q} has positions outside "
                                  f"its {out}x{inn} weight")
            positions = rows * inn + cols
        else:
            want = int(out * inn * (1 - float(config.get("sparsity", 0.99))))
            if tuple(index.shape) != (k,) or k != want:
                raise RmpeftError(f"adapter {where} does not fit the base model: {q} holds {k} entries with "
                                  f"indices of shape {tuple(index.shape)}, but Super-Tuning sparsity="
                                  f"{config.get('sparsity')} on a {out}x{inn} weight stores {want}")
            if (index < 0).any() or (index >= out * inn).any():
                raise RmpeftError(f"adapter {where} does not fit the base model: {q} has positions outside "
                                  f"its {out}x{inn} weight")
            positions = index
        if not torch.isfinite(values).all():
            raise RmpeftError(f"corrupt adapter {where}: {q}.{value_name} holds NaN or infinite values")
        entries[q] = folded((out, inn), positions, values)
    return config, entries


def linear_shapes(model: torch.nn.Module) -> Callable[[str], tuple[int, int] | None]:
    """``shape_of`` for :func:`read_adapter` from a (possibly meta-device) model."""
    def shape_of(q: str) -> tuple[int, int] | None:
        try:
            m = model.get_submodule(q)
        except AttributeError:
            return None
        return (m.out_features, m.in_features) if isinstance(m, torch.nn.Linear) else None

    return shape_of
