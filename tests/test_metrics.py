"""Metrics: SQuAD normalisation and token F1, correctness with several accepted answers."""

from __future__ import annotations

import pytest

from rmpeft.metrics import is_correct, normalize_answer, squad_f1, token_f1


def test_normalize_answer_lowercases_strips_punctuation_articles_and_spaces():
    assert normalize_answer("  The  Eiffel-Tower, in PARIS!  ") == "eiffeltower in paris"
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("theatre anthem") == "theatre anthem"  # articles only as whole words


def test_token_f1_counts_overlap_with_multiplicity():
    # pred tokens: [new, york, city]; gold: [york]: precision 1/3, recall 1 -> F1 0.5
    assert token_f1("New York City", "york") == pytest.approx(0.5)
    # pred [a,a] after normalisation -> [] ("a" is an article): no overlap
    assert token_f1("a a", "a") == 0.0
    # repeated tokens count at most as often as in the gold answer: pred [red, red, car], gold [red, car]
    assert token_f1("red red car", "red car") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert token_f1("", "answer") == 0.0


def test_squad_f1_is_the_max_over_gold_answers():
    assert squad_f1("100 degrees", ["100 degrees Celsius", "100 degrees"]) == 1.0
    assert squad_f1("100 degrees", ["100 degrees Celsius"]) == pytest.approx(0.8)
    assert squad_f1("The Earth.", ["earth"]) == 1.0
    assert squad_f1("mars", ["earth", "the moon"]) == 0.0
    with pytest.raises(ValueError):
        squad_f1("x", [])


def test_a_prediction_is_correct_against_one_or_several_gold_indices():
    assert is_correct(3, (1, 3)) and not is_correct(0, 1)
    assert is_correct(2, [0, 2]) and not is_correct(0, [1])
