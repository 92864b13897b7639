"""Turning examples into token batches, scoring candidates, and greedy generation.

Classification and multiple choice: each candidate is scored by its mean log-probability per
candidate token given the prompt; the prediction is the argmax; the training loss is the
cross-entropy over the candidates' scores. Generation (SQuAD, DROP): the training loss is the LM loss
on the answer tokens only; evaluation decodes greedily and is scored by token F1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rmpeft.data import Example


@dataclass
class Batch:
    """Candidate sequences of several examples, flattened: row r belongs to example ``owner[r]``."""

    input_ids: torch.Tensor         # (R, L) right-padded
    attention_mask: torch.Tensor    # (R, L)
    option_mask: torch.Tensor       # (R, L) 1 where the token is a candidate token (a prediction target)
    owner: torch.Tensor             # (R,) example index within the batch
    gold: torch.Tensor              # (E,) gold candidate per example
    num_candidates: list[int]       # per example

    def to(self, device: torch.device) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.option_mask.to(device),
                     self.owner.to(device), self.gold.to(device), self.num_candidates)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_candidate(tokenizer, prompt: str, candidate: str, max_length: int) -> tuple[list[int], int]:
    """Token ids of ``<bos> prompt candidate`` and the index where the candidate starts.

    Over-long inputs are truncated from the left (the candidate is always kept whole).
    """
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    p, c = _ids(tokenizer, prompt), _ids(tokenizer, candidate)
    if not c:
        raise ValueError(f"candidate {candidate!r} encodes to no tokens")
    keep = max(max_length - len(c) - len(bos), 1)
    p = p[-keep:]
    ids = bos + p + c
    return ids, len(bos) + len(p)


def collate(examples: list[Example], tokenizer, max_length: int, candidates: str = "all") -> Batch:
    """Encode examples into one flattened batch of candidate sequences.

    ``candidates="all"`` scores every candidate (classification, multiple choice);
    ``candidates="gold"`` keeps only the gold one (the LM-loss target of generation tasks).
    """
    rows: list[tuple[list[int], int]] = []
    owner, ncand = [], []
    for i, ex in enumerate(examples):
        cands = [ex.candidates[ex.gold]] if candidates == "gold" else ex.candidates
        for c in cands:
            rows.append(encode_candidate(tokenizer, ex.prompt, c, max_length))
            owner.append(i)
        ncand.append(len(cands))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    option = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (ids, start) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        attention[r, : len(ids)] = 1
        option[r, start: len(ids)] = 1
    gold = torch.tensor([0 if candidates == "gold" else ex.gold for ex in examples], dtype=torch.long)
    return Batch(input_ids, attention, option, torch.tensor(owner), gold, ncand)


def token_logprobs(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum, count) of candidate-token log-probabilities per row."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    logits = out.logits[:, :-1].float()
    targets = batch.input_ids[:, 1:]
    mask = batch.option_mask[:, 1:].to(logits.dtype)
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
    nll = nll.view_as(targets) * mask
    return -nll.sum(-1), mask.sum(-1)


def candidate_scores(model: nn.Module, batch: Batch) -> list[torch.Tensor]:
    """Mean log-probability per candidate token, one tensor of candidate scores per example."""
    total, count = token_logprobs(model, batch)
    scores = total / count.clamp_min(1)
    return list(torch.split(scores, batch.num_candidates))


def classification_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Cross-entropy over each example's candidates, using the candidates' mean log-probabilities as logits."""
    per_example = candidate_scores(model, batch)
    losses = [F.cross_entropy(s.unsqueeze(0), batch.gold[i: i + 1]) for i, s in enumerate(per_example)]
    return torch.stack(losses).mean()


def lm_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """LM loss on the candidate (answer) tokens only, averaged over those tokens."""
    total, count = token_logprobs(model, batch)
    return -total.sum() / count.sum().clamp_min(1)


@torch.no_grad()
def predict_choices(model: nn.Module, batch: Batch) -> list[int]:
    """Index of the best-scoring candidate of each example."""
    return [int(s.argmax()) for s in candidate_scores(model, batch)]


@torch.no_grad()
def generate_answers(model: nn.Module, tokenizer, prompts: list[str], max_length: int, max_new_tokens: int,
                     device: torch.device) -> list[str]:
    """Greedy decoding from each prompt (left-padded batch); the answer stops at the first newline."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    seqs = [bos + _ids(tokenizer, p)[-max(max_length - max_new_tokens - len(bos), 1):] for p in prompts]
    width = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    for i, s in enumerate(seqs):
        input_ids[i, width - len(s):] = torch.tensor(s)
        attention[i, width - len(s):] = 1
    out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                         max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                         pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
    texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return [t.split("\n")[0].strip() for t in texts]
