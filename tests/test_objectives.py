"""Objectives: chosen by task kind through the registry, ReCoRD's gold set scored inside the objective,
the validation loss, the shared step count, and a trainer that names no task, kind or method."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from rmpeft import objectives, scoring
from rmpeft.data import KINDS, TASK_NAMES, Example
from rmpeft.errors import RmpeftError
from rmpeft.methods import METHODS
from rmpeft.objectives import OBJECTIVES, ChoiceObjective, GenerationObjective, Objective, build_objective
from rmpeft.run import total_steps
from tests.helpers import CONF_DIR

REPO = Path(__file__).resolve().parent.parent
TRAINER = {"max_length": 64, "max_new_tokens": 4, "eval_max_tokens": None}


def test_every_task_kind_has_an_objective_whose_metric_its_configs_use():
    assert set(KINDS.values()) <= set(OBJECTIVES)
    for name in TASK_NAMES:
        cfg = OmegaConf.load(CONF_DIR / "task" / f"{name}.yaml")
        assert cfg.metric == OBJECTIVES[cfg.kind].metric, name
    assert OBJECTIVES["classification"] is OBJECTIVES["multiple_choice"] is ChoiceObjective
    assert OBJECTIVES["generation"] is GenerationObjective


def test_a_new_kind_is_one_registered_class(monkeypatch):
    monkeypatch.setattr(objectives, "OBJECTIVES", dict(OBJECTIVES))

    @objectives.register
    class Regression(Objective):
        kinds = ("regression",)
        metric = "mse"

    obj = objectives.build_objective({"kind": "regression"}, tokenizer=None, trainer_cfg=TRAINER)
    assert type(obj) is Regression and obj.max_length == 64 and obj.max_new_tokens == 4
    with pytest.raises(RmpeftError, match=r"unknown task.kind 'ranking'; valid choices: .*regression"):
        objectives.build_objective({"kind": "ranking"}, tokenizer=None, trainer_cfg=TRAINER)


def test_unknown_kind_lists_the_registered_ones():
    with pytest.raises(RmpeftError, match="unknown task.kind 'vision'; valid choices: classification, generation"):
        build_objective({"kind": "vision"}, None, TRAINER)


def test_choice_scores_accept_every_index_of_the_gold_set(monkeypatch):
    monkeypatch.setattr(scoring, "collate", lambda *a, **k: scoring.Batch(*(torch.zeros(1),) * 5, [1]))
    monkeypatch.setattr(scoring, "predict_choices", lambda model, batch, path="auto": [2, 2, 1])
    exs = [Example("p", ["a", "b", "c"], gold=0, meta={"gold_set": [0, 2]}),  # ReCoRD: two names, one entity
           Example("p", ["a", "b", "c"], gold=0),
           Example("p", ["a", "b"], gold=1)]
    scores = ChoiceObjective(None, TRAINER).scores(torch.nn.Identity(), exs, torch.device("cpu"))
    assert scores == [1.0, 0.0, 1.0]
    assert Objective.aggregate(scores) == pytest.approx(2 / 3)


def test_generation_scores_max_f1_over_answers_with_the_unwrapped_model(monkeypatch):
    seen = {}

    def fake_generate(model, tok, prompts, max_length, max_new_tokens, device):
        seen.update(model=model, prompts=prompts, lengths=(max_length, max_new_tokens))
        return ["Paris", "blue car"]

    monkeypatch.setattr(scoring, "generate_answers", fake_generate)
    inner, wrapper = torch.nn.Linear(1, 1), torch.nn.Identity()
    obj = GenerationObjective(None, TRAINER, unwrap=lambda m: inner)
    exs = [Example("Q1", [" London\n"], answers=["London", "Paris"]), Example("Q2", [" red car\n"], answers=["red car"])]
    assert obj.scores(wrapper, exs, torch.device("cpu")) == pytest.approx([1.0, 0.5])
    assert seen == {"model": inner, "prompts": ["Q1", "Q2"], "lengths": (64, 4)}


class _CountBatch:
    def __init__(self, n: int):
        self.n = n

    def to(self, device):
        return self


class _Counting(Objective):
    """Loss of a batch = the number of its examples."""

    def collate(self, examples):
        return _CountBatch(len(examples))

    def loss(self, model, batch):
        return torch.tensor(float(batch.n))


def test_mean_loss_weights_batches_by_their_examples():
    exs = [Example("p", ["a"])] * 5
    # batches of 2, 2, 1 -> losses 2, 2, 1 weighted 2, 2, 1 -> 9 / 5
    assert _Counting(None, TRAINER).mean_loss(torch.nn.Identity(), exs, 2, torch.device("cpu")) == pytest.approx(1.8)
    assert _Counting(None, TRAINER).mean_loss(torch.nn.Identity(), [], 2, torch.device("cpu")) == 0.0


@pytest.mark.parametrize("epochs,max_steps,expected", [(5, None, 5 * 13), (5, 20, 20), (1, 1000, 13)])
def test_total_steps(epochs, max_steps, expected):
    cfg = OmegaConf.create({"trainer": {"batch_size": 8, "epochs": epochs, "max_steps": max_steps}})
    assert total_steps(cfg, 100) == expected


def test_trainer_names_no_task_kind_or_method():
    source = (REPO / "rmpeft" / "trainer.py").read_text()
    words = set(OBJECTIVES) | {"gold_set", "is_generation", r"\.kind"}
    quoted = set(TASK_NAMES) | set(METHODS)
    found = [w for w in words if re.search(rf"\b{w}\b", source)]
    found += [q for q in quoted if re.search(rf"[\"']{q}[\"']", source)]
    assert not found, f"rmpeft/trainer.py names {found}"


def test_validation_loss_is_the_same_when_token_bounded_batches_split_it(smoke_overrides):
    from rmpeft.run import build_run
    from tests.helpers import compose_train

    run = build_run(compose_train(smoke_overrides + ["task.num_val=12"]))
    examples, obj = run.splits["validation"], run.objective
    obj.eval_max_tokens = None
    whole = obj.mean_loss(run.model.eval(), examples, 12, run.device)
    obj.eval_max_tokens = 40                    # a few rows per forward
    assert len(obj.eval_batches(examples)) > 2
    split = obj.mean_loss(run.model, examples, 12, run.device)
    assert split == pytest.approx(whole, rel=1e-5)
