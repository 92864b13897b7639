"""Task metrics: whether a prediction is correct (accuracy) and SQuAD token F1 (the official SQuAD v1.1 definition, as MeZO uses it).

Small enough to own: the ``evaluate`` library's ``squad`` metric computes the same F1 but needs its
script downloaded from the Hub at run time, which offline runs cannot do.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Collection, Sequence

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower-case, drop punctuation, drop the articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, answer: str) -> float:
    """Token-overlap F1 between a prediction and one gold answer, after normalisation."""
    pred, gold = normalize_answer(prediction).split(), normalize_answer(answer).split()
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_f1(prediction: str, answers: Sequence[str]) -> float:
    """Max token F1 of ``prediction`` over the gold ``answers`` (a value in [0, 1])."""
    if isinstance(answers, str):
        answers = [answers]
    if not answers:
        raise ValueError("squad_f1 needs at least one gold answer")
    return max(token_f1(prediction, a) for a in answers)


def is_correct(pred: int, gold: int | Collection[int]) -> bool:
    """Whether a predicted candidate index is right; ``gold`` may list several accepted indices
    (ReCoRD, where every surface form of the answer entity counts)."""
    return pred in gold if isinstance(gold, Collection) else pred == gold

