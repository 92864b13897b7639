"""Turning examples into token batches, scoring candidates, and greedy generation.

Classification and multiple choice: each candidate is scored by its mean log-probability per
candidate token given the prompt; the prediction is the argmax; the training loss is the
cross-entropy over the candidates' scores. Generation (SQuAD, DROP): the training loss is the LM loss
on the answer tokens only; evaluation decodes greedily and is scored by token F1.

:mod:`~rmpeft.scoring.batch` encodes examples (both the flat and the shared-prompt layout),
:mod:`~rmpeft.scoring.paths` computes the candidate tokens' log-probabilities (shared prompt once,
or every row in full), :mod:`~rmpeft.scoring.logits` keeps logits to the scored positions only,
:mod:`~rmpeft.scoring.generation` decodes. Every scoring function takes ``path`` (``auto``,
``shared``, ``flat``; see :mod:`~rmpeft.scoring.paths`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rmpeft.scoring.batch import (
    Batch,
    collate,
    collate_rows,
    encode_candidate,
    encode_example,
    flat_tokens,
    pad_id,
    size_chunks,
    token_chunks,
)
from rmpeft.scoring.generation import generate_answers
from rmpeft.scoring.paths import (
    PATHS,
    SharedPathUnsupported,
    flat_token_logprobs,
    shared_path_issue,
    shared_token_logprobs,
    token_logprobs,
)

__all__ = [
    "PATHS", "Batch", "SharedPathUnsupported", "candidate_scores", "classification_loss", "collate", "collate_rows",
    "encode_candidate", "encode_example", "flat_token_logprobs", "flat_tokens", "generate_answers", "lm_loss",
    "pad_id", "predict_choices", "shared_path_issue", "shared_token_logprobs", "size_chunks", "token_chunks", "token_logprobs",
]


def candidate_scores(model: nn.Module, batch: Batch, path: str = "auto") -> list[torch.Tensor]:
    """Mean log-probability per candidate token, one tensor of candidate scores per example."""
    total, count = token_logprobs(model, batch, path)
    scores = total / count.clamp_min(1)
    return list(torch.split(scores, batch.num_candidates))


def classification_loss(model: nn.Module, batch: Batch, path: str = "auto") -> torch.Tensor:
    """Cross-entropy over each example's candidates, using the candidates' mean log-probabilities as logits."""
    per_example = candidate_scores(model, batch, path)
    losses = [F.cross_entropy(s.unsqueeze(0), batch.gold[i: i + 1]) for i, s in enumerate(per_example)]
    return torch.stack(losses).mean()


def lm_loss(model: nn.Module, batch: Batch, path: str = "auto") -> torch.Tensor:
    """LM loss on the candidate (answer) tokens only, averaged over those tokens."""
    total, count = token_logprobs(model, batch, path)
    return -total.sum() / count.sum().clamp_min(1)


@torch.no_grad()
def predict_choices(model: nn.Module, batch: Batch, path: str = "auto") -> list[int]:
    """Index of the best-scoring candidate of each example."""
    return [int(s.argmax()) for s in candidate_scores(model, batch, path)]
