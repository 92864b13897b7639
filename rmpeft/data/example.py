"""The rendered example: what the model sees."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Example:
    """One rendered example: what the model sees.

    Classification / multiple choice: the model scores ``prompt + candidates[i]`` for each i and
    predicts the candidate with the highest mean log-probability per candidate token; ``gold`` is the
    index of the correct candidate (``meta["gold_set"]``, when present, lists every accepted index).
    Generation (SQuAD, DROP): ``candidates == [answers[0]]`` is the LM-loss training target,
    ``gold == 0``, and evaluation decodes greedily from ``prompt`` and takes the max token F1 over
    ``answers``.
    """

    prompt: str
    candidates: list[str]
    gold: int = 0
    answers: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
