"""Tasks: loading raw examples (hub or local official files), sampling the paper's splits, and
rendering them with the MeZO prompt templates into :class:`Example` objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Example:
    """One rendered example: what the model sees.

    Classification / multiple choice: the model scores ``prompt + candidates[i]`` for each i and
    predicts the candidate with the highest mean log-probability per candidate token; ``gold`` is the
    index of the correct candidate.
    Generation (SQuAD, DROP): ``candidates == [answers[0]]`` is the LM-loss training target,
    ``gold == 0``, and evaluation decodes greedily from ``prompt`` and takes the max token F1 over
    ``answers``.
    """

    prompt: str
    candidates: list[str]
    gold: int = 0
    answers: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


# Imported after Example: the submodules import it from here.
from rmpeft.data.loading import KINDS, PAPER_TASKS, TASK_NAMES, load_splits  # noqa: E402

__all__ = ["Example", "KINDS", "PAPER_TASKS", "TASK_NAMES", "load_splits"]
