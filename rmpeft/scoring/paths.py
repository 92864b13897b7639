"""Candidate-token log-probabilities of a :class:`~rmpeft.scoring.batch.Batch`, by one of two paths.

* ``flat``: one forward over every ``prompt + candidate`` row (the prompt runs once per candidate).
* ``shared``: one forward over each distinct prompt; each candidate's first token is scored from
  its prompt's last position. Longer candidates continue from the prompt's key/value cache
  (expanded over the candidates, so gradients reach the prompt) in a second, short forward.

Both give the same numbers up to float summation order. ``auto`` takes the shared path when a
prompt is shared by several rows and the model supports it; otherwise (a single row per prompt,
prefix tuning with multi-token candidates, a model without a key/value cache or ``position_ids``)
it runs the flat path and says why once in the log.
"""

from __future__ import annotations

import inspect
import logging

import torch
from torch import nn

from rmpeft.errors import unknown_choice
from rmpeft.scoring.batch import Batch
from rmpeft.scoring.logits import base_model, row_sums, selected_logits, target_logprobs

log = logging.getLogger(__name__)

PATHS = ("auto", "shared", "flat")
_reported: set[str] = set()


class SharedPathUnsupported(Exception):
    """The shared-prompt path cannot run this model on this batch."""


def flat_token_logprobs(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum, count) of candidate-token log-probabilities per row, one forward over the flat rows."""
    keep = torch.zeros_like(batch.option_mask, dtype=torch.bool)
    keep[:, :-1] = batch.option_mask[:, 1:].bool()       # position t predicts token t + 1
    logits, _ = selected_logits(model, keep, input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                use_cache=False)  # nothing is decoded after it: no key/value cache to fill
    targets = batch.input_ids[:, 1:][keep[:, :-1]]
    return row_sums(target_logprobs(logits, targets), keep), keep.sum(-1).to(torch.float32)


def shared_path_issue(model: nn.Module, batch: Batch) -> str | None:
    """Why the shared path cannot score ``batch`` with ``model`` (None: it can)."""
    if not batch.has_shared_layout:
        return "the batch has no shared-prompt layout"
    if batch.cand_ids.size(1) == 1:   # type: ignore[union-attr]
        return None                   # single-token candidates: a plain forward over the prompts
    inner = base_model(model)
    peft_cfg = getattr(inner, "active_peft_config", None)
    if peft_cfg is not None and getattr(peft_cfg, "is_prompt_learning", False):
        return "prefix tuning keeps its own key/value cache"
    core = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    checkpointing = getattr(core, "is_activation_checkpointing", None)   # transformers >= 5: the newer name
    if checkpointing is None:
        checkpointing = getattr(core, "is_gradient_checkpointing", False)
    if core.training and checkpointing is True:
        return "activation checkpointing fills no key/value cache in training"
    params = inspect.signature(core.forward).parameters
    lacking = [p for p in ("past_key_values", "position_ids") if p not in params]
    if lacking:
        return f"{type(core).__name__}.forward takes no {' / '.join(lacking)}"
    return None


def shared_token_logprobs(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum, count) per candidate row, from one pass over the distinct prompts (plus one over the
    candidates' continuations when any candidate has several tokens)."""
    assert batch.prompt_ids is not None and batch.prompt_mask is not None and batch.cand_ids is not None
    assert batch.cand_mask is not None and batch.group is not None
    groups, width = batch.prompt_ids.shape
    plen = batch.prompt_mask.sum(-1)
    last = torch.zeros((groups, width), dtype=torch.bool, device=plen.device)
    last[torch.arange(groups, device=plen.device), plen - 1] = True
    multi = batch.cand_ids.size(1) > 1
    logits, out = selected_logits(model, last, input_ids=batch.prompt_ids, attention_mask=batch.prompt_mask,
                                  use_cache=multi)
    logp = torch.log_softmax(logits.float(), -1)
    total = logp[batch.group, batch.cand_ids[:, 0]]
    if not multi:
        return total, torch.ones_like(total)
    cache = getattr(out, "past_key_values", None)
    if cache is None or not hasattr(cache, "batch_select_indices"):
        raise SharedPathUnsupported(f"{type(base_model(model)).__name__} returned no selectable key/value cache")
    if cache.get_seq_length() == 0:   # e.g. activation checkpointing in training drops the cache
        raise SharedPathUnsupported(f"{type(base_model(model)).__name__} filled no key/value cache")
    cache.batch_select_indices(batch.group)               # one copy of its prompt's cache per candidate
    steps = batch.cand_ids.size(1) - 1
    attention = torch.cat([batch.prompt_mask[batch.group], batch.cand_mask[:, :-1]], dim=1)
    positions = plen[batch.group].unsqueeze(1) + torch.arange(steps, device=plen.device)
    keep = batch.cand_mask[:, 1:].bool()
    logits, _ = selected_logits(model, keep, input_ids=batch.cand_ids[:, :-1], attention_mask=attention,
                                position_ids=positions, past_key_values=cache, use_cache=True)
    rest = row_sums(target_logprobs(logits, batch.cand_ids[:, 1:][keep]), keep)
    return total + rest, batch.cand_mask.sum(-1).to(torch.float32)


def _report(reason: str) -> None:
    if reason not in _reported:
        _reported.add(reason)
        log.info("candidate scoring: flat path (every candidate with its own copy of the prompt): %s", reason)


def token_logprobs(model: nn.Module, batch: Batch, path: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(sum, count) of candidate-token log-probabilities per row, by ``path`` (auto, shared, flat)."""
    if path not in PATHS:
        raise unknown_choice("scoring path", path, PATHS)
    if path == "flat":
        return flat_token_logprobs(model, batch)
    reason = shared_path_issue(model, batch)
    if reason is None and path == "auto" and batch.prompt_ids.size(0) == batch.input_ids.size(0):  # type: ignore[union-attr]
        return flat_token_logprobs(model, batch)           # nothing shared: one forward is cheaper
    if reason is None:
        try:
            return shared_token_logprobs(model, batch)
        except SharedPathUnsupported as e:
            reason = str(e)
    if path == "shared":
        raise SharedPathUnsupported(reason)
    _report(reason)
    return flat_token_logprobs(model, batch)
