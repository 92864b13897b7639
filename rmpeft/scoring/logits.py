"""Logits only where they are scored.

A causal LM's output head turns every position's hidden state into a vocabulary-sized row; scoring
needs a handful of them (the candidate tokens' predecessors). :func:`selected_logits` runs the
model with a forward pre-hook on its output head that keeps only the chosen positions, so the head,
the float copy and the log-softmax see those rows alone. It works for any Hugging Face causal LM and
through wrappers (peft, DDP/FSDP) since only the head module is hooked. A model whose head sees
other shapes (e.g. extra virtual tokens) gets its full logits selected afterwards: same numbers.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Log-softmax rows per chunk without gradients: at most this many logits at once (1 GiB in fp32).
CHUNK_ELEMENTS = 1 << 28


def base_model(model: nn.Module) -> nn.Module:
    """The model inside distributed / compile wrappers (peft wrappers are kept)."""
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model)


def selected_logits(model: nn.Module, keep: torch.Tensor, **inputs: Any) -> tuple[torch.Tensor, Any]:
    """``(logits at the positions where keep (B, T) is true, in row-major order (N, V); the model output)``."""
    head = base_model(model).get_output_embeddings()
    applied = False

    def select(module: nn.Module, args: tuple) -> tuple | None:
        nonlocal applied
        hidden = args[0]
        if applied or hidden.dim() != 3 or hidden.shape[:2] != keep.shape:
            return None
        applied = True
        return (hidden[keep].unsqueeze(0), *args[1:])

    handle = head.register_forward_pre_hook(select) if head is not None else None
    try:
        out = model(**inputs)
    finally:
        if handle is not None:
            handle.remove()
    logits = out.logits
    logits = logits[0] if applied else logits[keep]
    return logits, out


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log p(targets[i])`` under each row of ``logits`` (N, V), in fp32. Without gradients the
    log-softmax runs in chunks of rows so its float copy stays bounded."""
    if logits.requires_grad and torch.is_grad_enabled():
        return -F.cross_entropy(logits.float(), targets, reduction="none")
    rows = max(CHUNK_ELEMENTS // max(logits.size(-1), 1), 1)
    parts = [-F.cross_entropy(logits[i: i + rows].float(), targets[i: i + rows], reduction="none")
             for i in range(0, logits.size(0), rows)]
    return torch.cat(parts) if parts else logits.new_zeros(0, dtype=torch.float32)


def row_sums(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Per row of ``keep`` (R, T), the sum of the ``values`` of its true positions (row-major order)."""
    rows = keep.nonzero()[:, 0]
    return torch.zeros(keep.size(0), dtype=values.dtype, device=values.device).index_add(0, rows, values)
